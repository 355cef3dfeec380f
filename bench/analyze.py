"""Packets per second of the whole offline detection path (what ``mld detector analyze`` runs) on a
1M-packet capture, against the same path without the forests, in the same run.

The capture is build/bench/mixed-1m.pcap (bench/make_capture.py, built if missing: 1,000,000
packets of the real nDPI and attack captures in rounds with shifted addresses, ~360,000
flow records). Two contenders, each in its own process, alternating, --repeats times,
median:

- analyze: ``detector.analysis.analyze_captures([pcap], cfg.sniffer, Scorer(bundle,
  cfg.detector.thresholds, cfg.detector.top_features))`` iterated to the end: native flow
  engine, sniffer pipeline (source context, fast rules), feature matrix, every family's
  compiled forest (``predict_threads`` from the config), max(fast, ML), labels and the
  per-flow explanation. Timed from the first call to the last batch; loading the bundle
  (compiled beforehand into a temp cache) is not timed. The time spent in
  ``Scorer.score`` and in the forests (``LoadedBundle.predict``) is measured inside the
  run and printed beside.
- flows_only: the same with ``scorer=None``: flows, features and fast rules only.

No JSON is written per flow (``mld detector analyze`` adds that on top).

The bundle: --bundle DIR; else detector/bundle when it has a manifest.json; else one is
trained for the run into a temp folder with detector.train.train_bundle on ../shared/data
plus the lab capture --train-lab (default build/lab-data/run-lab-dev, when present: the
shared captures alone train only ddos and scan, the lab run has all five families), with
config.detector.train's forest size (--quick: 6 trees, depth 8, as the test fixture).

    .venv/bin/python bench/analyze.py                   # ~1.5 minutes
    .venv/bin/python bench/analyze.py --bundle detector/bundle --repeats 5
    .venv/bin/python bench/analyze.py --quick           # smoke run on 50,000 packets

Last line: ``analyze_pps=N flows_only_pps=N ratio=R flows=N packets=N`` (ratio = analyze /
flows_only), then ``alerts``, ``score_s`` and ``forest_s`` (seconds in Scorer.score and in
the forests, median per run), ``families``, ``n_trees``, ``max_depth`` (the largest),
``bundle_load_s`` (compile and load; load only when the bundle was trained here) and
``load1`` (the 1-minute load average at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for bench.common
from bench.common import shared_data

REPO = Path(__file__).resolve().parent.parent
SHIPPED_BUNDLE = REPO / "detector" / "bundle"


# ---- worker (its own process) --------------------------------------------------------------


def _worker(kind: str, pcap: str, bundle: str, cache: str) -> dict[str, float]:
    from config import load_config
    from detector.analysis import AnalysisStats, analyze_captures
    from detector.bundle import load_bundle
    from detector.scoring import Scorer
    from proto.events_pb2 import LABEL_BENIGN

    cfg = load_config()
    scorer: Scorer | None = None
    spent = {"score": 0.0, "forest": 0.0}
    if kind == "analyze":
        loaded = load_bundle(bundle, cache, threads=cfg.detector.predict_threads)
        scorer = Scorer(loaded, cfg.detector.thresholds, cfg.detector.top_features)
        setattr(scorer, "score", _timed(scorer.score, spent, "score"))  # noqa: B010
        setattr(loaded, "predict", _timed(loaded.predict, spent, "forest"))  # noqa: B010
    stats = AnalysisStats()
    flows = alerts = 0
    started = time.perf_counter()
    for batch in analyze_captures([pcap], cfg.sniffer, scorer, stats):
        flows += len(batch)
        if batch.scores is not None:
            alerts += int((batch.scores.label != LABEL_BENIGN).sum())
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "packets": float(stats.packets),
        "flows": float(flows),
        "alerts": float(alerts),
        "score_s": spent["score"],
        "forest_s": spent["forest"],
    }


def _timed(fn: Any, spent: dict[str, float], key: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t0

    return wrapper


def _run_worker(kind: str, pcap: Path, bundle: Path, cache: Path, timeout: float) -> Any:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(pcap), str(bundle), str(cache)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"analyze: {kind} worker failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the bundle ----------------------------------------------------------------------------


def train_quick_bundle(out: Path, cache: Path, lab: Path | None, quick: bool) -> None:
    from config import load_config
    from detector.dataset import discover
    from detector.train import train_bundle

    cfg = load_config()
    shared = shared_data()
    train = cfg.detector.train
    if quick:
        train = dataclasses.replace(
            train, n_trees=6, max_depth=8, n_trees_per_family={}, max_depth_per_family={}
        )
    if lab is not None and not (lab / "labels.csv").exists():
        lab = None
    also = f" and {lab}" if lab else ""
    print(
        f"bundle: training one on {shared}{also} ({train.n_trees} trees, depth "
        f"{train.max_depth}) into {out}",
        flush=True,
    )
    started = time.perf_counter()
    captures = discover(lab, shared, ())
    train_bundle(captures, out, cfg.sniffer, train, cache_dir=cache)
    print(f"bundle: trained in {time.perf_counter() - started:.0f} s", flush=True)


def describe_bundle(bundle: Path, cache: Path) -> tuple[str, int, int, float]:
    """Compile (unless train_bundle did) and load the bundle once, timed; its families,
    largest tree count and depth."""
    from detector.bundle import load_bundle

    started = time.perf_counter()
    loaded = load_bundle(bundle, cache)
    load_s = time.perf_counter() - started
    entries = [loaded.manifest.families[f] for f in loaded.families]
    for e in entries:
        print(f"  {e.family}: {e.n_trees} trees, depth {e.max_depth}, {e.n_nodes} nodes")
    print(f"bundle: {loaded.version} from {bundle}, loaded in {load_s:.1f} s")
    trees = max(e.n_trees for e in entries)
    depth = max(e.max_depth for e in entries)
    return ",".join(loaded.families), trees, depth, load_s


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(1 << 22):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: .venv/bin/python bench/analyze.py --bundle detector/bundle --repeats 5",
    )
    parser.add_argument("--bundle", type=Path, help="model bundle folder (default: see --help)")
    parser.add_argument(
        "--train-lab",
        type=Path,
        default=REPO / "build" / "lab-data" / "run-lab-dev",
        help="lab capture folder added to the training data of a bundle trained here",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="capture size")
    parser.add_argument("--quick", action="store_true", help="smoke run on 50,000 packets")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from make_capture import capture_path, ensure_capture

    if args.quick:
        args.packets, args.repeats = 50_000, 1
    pcap = capture_path(args.packets)
    counts = ensure_capture(pcap, args.packets)
    print(f"capture: {pcap.name}: {counts['packets']} packets, ~{counts['flows']} 5-tuples")
    timeout = 120 + args.packets / 2_000

    with tempfile.TemporaryDirectory(prefix="mld-bench-analyze-") as tmp:
        cache = Path(tmp) / "cache"
        if args.bundle is not None:
            bundle = args.bundle
        elif (SHIPPED_BUNDLE / "manifest.json").exists():
            bundle = SHIPPED_BUNDLE
        else:
            print(f"bundle: {SHIPPED_BUNDLE} has no manifest.json")
            bundle = Path(tmp) / "bundle"
            train_quick_bundle(bundle, cache, args.train_lab, args.quick)
        families, trees, depth, load_s = describe_bundle(bundle, cache)

        warm(pcap)
        pps: dict[str, list[float]] = {"analyze": [], "flows_only": []}
        last: dict[str, dict[str, float]] = {}
        spent: dict[str, list[float]] = {"score_s": [], "forest_s": []}
        for rep in range(args.repeats):
            for kind in pps:
                got = _run_worker(kind, pcap, bundle, cache, timeout)
                rate = got["packets"] / got["seconds"]
                pps[kind].append(rate)
                last[kind] = got
                detail = ""
                if kind == "analyze":
                    spent["score_s"].append(got["score_s"])
                    spent["forest_s"].append(got["forest_s"])
                    detail = (
                        f", Scorer.score {got['score_s']:.2f} s of which forests "
                        f"{got['forest_s']:.2f} s, {got['alerts']:.0f} alerts"
                    )
                print(
                    f"run {rep + 1}/{args.repeats} {kind:10} {rate:10,.0f} pkt/s "
                    f"({got['seconds']:.2f} s, {got['flows']:.0f} flows{detail})",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in pps.items()}
    a, f = last["analyze"], last["flows_only"]
    if a["flows"] != f["flows"] or a["packets"] != f["packets"]:
        print(
            f"warning: analyze saw {a['flows']:.0f} flows / {a['packets']:.0f} packets, "
            f"flows_only {f['flows']:.0f} / {f['packets']:.0f}"
        )
    load1 = os.getloadavg()[0]
    print(
        f"median: analyze {med['analyze']:,.0f} pkt/s, flows only {med['flows_only']:,.0f} "
        f"pkt/s ({med['analyze'] / med['flows_only']:.3f}); load average {load1:.2f}"
    )
    print(
        f"analyze_pps={med['analyze']:.0f} flows_only_pps={med['flows_only']:.0f} "
        f"ratio={med['analyze'] / med['flows_only']:.3f} flows={a['flows']:.0f} "
        f"packets={a['packets']:.0f} alerts={a['alerts']:.0f} "
        f"score_s={statistics.median(spent['score_s']):.2f} "
        f"forest_s={statistics.median(spent['forest_s']):.2f} families={families} "
        f"n_trees={trees} max_depth={depth} bundle_load_s={load_s:.1f} load1={load1:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
