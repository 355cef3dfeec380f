"""Training time and peak memory of the anomaly model against window size and history.

Events. A pool of real ScoredEvents is made from the shared captures (pcaps/ndpi,
pcaps/attacks and pcaps/suricata-verify, ~40,000 flows) through the sniffer's flow engine
and the shipped bundle (``detector.analysis.scored_events``, as ``mld rag import`` does), each
capture moved 30 s after the previous one (flows starting later in a capture dropped) and
at most 1,000 flows per capture (floods make hundreds of thousands of alike flows; most
of a network's traffic is not an attack), and stored in a fresh event store. History is
then added in SQL: the pool's rows copied again and again, each copy moved one pool span
further into the past (the event blobs are the pool's, so the features are those of real
flows), until the store holds --small rows (default 400,000), later --large (2,000,000).

Training. For each window size (--windows, default 10k, 50k, 100k, 200k flows) and each
store, one ``mld anomaly train`` equivalent (``anomaly.train.retrain``: read the window,
fit 100 trees on 256 rows each, write, compile into an empty cache, load, probe, judge on
the 10% held back) runs in a child process of its own, so its peak RSS
(``ru_maxrss``) is its own; ``rss_mb_base`` is a child that only imports the same
modules. Malicious flows are left out of windows, so a window of N reads a few more rows.
The store is never read past the window (rag/store.py ``recent``: the time index, newest
first, LIMIT), so the time and memory at 10x history should equal those at 2x.

    .venv/bin/python bench/anomaly_train.py             # ~5 min on 2 cores, ~1.6 GB disk in /tmp
    .venv/bin/python bench/anomaly_train.py --quick     # seconds: windows 2k and 5k

Last line: ``train_s_10k=.. ... rss_mb_200k=.. flat_ratio_time=.. flat_ratio_rss=..``
(``train_s_<w>``, ``rss_mb_<w>`` on the small store; ``flat_ratio_*`` the largest
window's time and RSS with the large store over the small one; ``flat_ratio_read_fit``
the same for reading and fitting alone, the part that could grow with the window).
Each training runs --repeat times (default 2) and the fastest is kept: the C compiler's
time varies by a second or more between runs on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import shared_data  # noqa: E402

_COLUMNS = (
    "scored_ts, stored_ts, sensor, detector, verdict_id, flow_id, ip_version, src, "
    "dst, src_port, dst_port, proto, family, label, final_score, fast_score, fast_rule, "
    "ml_score, ml_family, packets, bytes, model_version, description, event"
)


def build_pool(db: Path) -> int:
    """The real events, stored; returns how many."""
    from config import load_config
    from detector.analysis import scored_events
    from detector.scoring import default_scorer
    from rag.store import EventStore

    cfg = load_config()
    scorer = default_scorer(cfg.detector)
    data = shared_data() / "pcaps"
    paths = [
        *sorted((data / "ndpi").glob("*.pcap*")),
        *sorted((data / "attacks").rglob("*.pcap*")),
        *sorted((data / "suricata-verify").rglob("*.pcap*")),
    ]
    store = EventStore(db)
    n = 0
    try:
        for i, path in enumerate(paths):
            t0 = 1.7e9 + 30.0 * i
            kept = 0
            for batch in scored_events([path], cfg.sniffer, scorer, shift_to=t0):
                keep = [e for e in batch if t0 - 1 <= e.record.first_ts_ns / 1e9 < t0 + 29]
                keep = keep[: max(0, 1000 - kept)]
                if keep:
                    store.add(keep, "bench", [""] * len(keep))
                kept += len(keep)
            n += kept
    finally:
        store.close()
    return n


def grow(db: Path, pool: int, rows: int) -> float:
    """Copy the pool's rows into the past until the store holds ``rows``; seconds taken."""
    start = time.perf_counter()
    con = sqlite3.connect(db)
    try:
        lo, hi = con.execute(
            "SELECT MIN(ts), MAX(ts) FROM events WHERE id <= ?", (pool,)
        ).fetchone()
        span = float(hi - lo) + 30.0
        have = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        r = have // pool
        while have < rows:
            take = min(pool, rows - have)
            shift = r * span
            with con:
                con.execute(
                    f"INSERT INTO events (ts, last_ts, {_COLUMNS}) "
                    f"SELECT ts - ?, last_ts - ?, {_COLUMNS} FROM events WHERE id <= ?",
                    (shift, shift, take),
                )
            have += take
            r += 1
    finally:
        con.close()
    return time.perf_counter() - start


def child(db: str, window: int, base_only: bool) -> None:
    """One training in this process; prints its figures as JSON."""
    import logging

    logging.disable(logging.WARNING)
    from anomaly.train import retrain
    from detector.config import AnomalyConfig

    out: dict[str, object] = {}
    if not base_only:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = AnomalyConfig(window_flows=window, min_flows=min(1000, window))
            d = retrain(cfg, db, Path(tmp) / "models", Path(tmp) / "cache")
            out = {
                "action": d.action,
                "rows": d.window["rows"],
                "read_s": d.read_s,
                "fit_s": d.fit_s,
                "compile_s": d.compile_s,
                "total_s": d.total_s,
            }
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(db: Path, window: int, base_only: bool = False, repeat: int = 1) -> dict[str, float]:
    """The fastest of ``repeat`` trainings, each in a child process of its own."""
    cmd = [sys.executable, __file__, "--child", str(db), str(window)]
    if base_only:
        cmd.append("--base-only")
    runs = []
    for _ in range(repeat):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"child failed: {proc.stderr[-2000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best: dict[str, float] = min(runs, key=lambda r: float(r.get("total_s", 0.0)))
    return best


def read_fit(r: dict[str, float]) -> float:
    return float(r["read_s"]) + float(r["fit_s"])


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", default="10000,50000,100000,200000")
    parser.add_argument("--small", type=int, default=400_000, help="rows of the first store")
    parser.add_argument("--large", type=int, default=2_000_000, help="rows of the second")
    parser.add_argument("--repeat", type=int, default=2, help="trainings per point (fastest)")
    parser.add_argument("--quick", action="store_true", help="windows 2k, 5k; 20k/100k rows")
    parser.add_argument("--child", nargs=2, metavar=("DB", "WINDOW"), help=argparse.SUPPRESS)
    parser.add_argument("--base-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.base_only)
        return
    if args.quick:
        args.windows, args.small, args.large, args.repeat = "2000,5000", 50_000, 100_000, 1
    windows = [int(w) for w in args.windows.split(",")]

    with tempfile.TemporaryDirectory(prefix="mld-anomaly-bench-") as tmp:
        db = Path(tmp) / "events.sqlite"
        t0 = time.perf_counter()
        pool = build_pool(db)
        print(f"pool: {pool} real flows stored in {time.perf_counter() - t0:.1f} s", flush=True)
        if pool == 0:
            sys.exit(f"anomaly_train: no flows from the shared captures in {shared_data()}")
        base = measure(db, 0, base_only=True)
        print(f"rss of a child that only imports: {base['rss_mb']:.0f} MB", flush=True)
        results: dict[tuple[int, int], dict[str, float]] = {}
        for rows in (args.small, args.large):
            took = grow(db, pool, rows)
            print(f"store: {rows} rows (history copies added in {took:.1f} s)", flush=True)
            for w in windows:
                r = measure(db, w, repeat=args.repeat)
                results[(rows, w)] = r
                print(
                    f"  window {w:>7} (x{rows / w:>5.0f} history): rows {r['rows']:>7} "
                    f"read {r['read_s']:6.2f} s  fit {r['fit_s']:5.2f} s  compile+load "
                    f"{r['compile_s']:5.2f} s  total {r['total_s']:6.2f} s  peak RSS "
                    f"{r['rss_mb']:6.0f} MB  ({r['action']})",
                    flush=True,
                )
        big = max(windows)
        small_r, large_r = results[(args.small, big)], results[(args.large, big)]
        keys = [f"{k}_{label(w)}={results[(args.small, w)][f]:.2f}"
                for k, f in (("train_s", "total_s"), ("read_s", "read_s"))
                for w in windows]  # fmt: skip
        keys += [f"rss_mb_{label(w)}={results[(args.small, w)]['rss_mb']:.0f}" for w in windows]
        keys += [
            f"train_s_{label(big)}_x{args.large // big}={large_r['total_s']:.2f}",
            f"rss_mb_{label(big)}_x{args.large // big}={large_r['rss_mb']:.0f}",
            f"rss_mb_base={base['rss_mb']:.0f}",
            f"flat_ratio_time={large_r['total_s'] / small_r['total_s']:.2f}",
            f"flat_ratio_rss={large_r['rss_mb'] / small_r['rss_mb']:.2f}",
            f"flat_ratio_read_fit={read_fit(large_r) / read_fit(small_r):.2f}",
            f"compile_s_{label(big)}={small_r['compile_s']:.2f}",
        ]
        print(" ".join(keys))


if __name__ == "__main__":
    main()
