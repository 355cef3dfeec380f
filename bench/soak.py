#!/usr/bin/env python3
"""Soak: minutes of steady traffic through the whole lab, and each service's memory.

Runs ``mld lab dev`` on a lab of its own (namespace prefix ``mldb-soak``; ``--prefix``)
with the ``soak`` scenario: benign users looping for the whole run (web, DNS, SSH, transfers,
ping), and, from this script, a connect scan (``nmap -sT``: its handshakes verify the
source, so it is blocked; a SYN scan is only alerted) every ``--attack-every`` s, so
the detector, the firewall (a block every time, 20 s TTL) and the RAG store keep working
too. Every ``--sample-s`` s the resident set size (VmRSS) of each service process is read
from /proc, with its two parts: RssAnon (anonymous memory: heaps, arrays; given back
only by the process) and RssFile (file-backed pages: the program's libraries and mapped
files such as the RAG store's memory-mapped index lists, which are the kernel's page
cache and reclaimable under pressure), so a growth can be told apart.

Growth per hour is the least-squares slope of RSS against time over the samples after
the warm-up (the first quarter of the run, at least 60 s: imports, the compiled models,
FAISS and SQLite caches filling), times 3600. etcd runs in the same lab and is measured
the same way as the baseline (not ML Defender's code). A service that restarted is
reported (``restarts_*``) and its slope is taken over its last process only.

The RAG store's ``index_bytes`` health counter (read through etcd every 30 s) gives its
vectors' bytes, and ``rss_growth_mb_per_h_rag_excl_index`` RSS minus that. Its writer
keeps the IVF lists in a mapped file (rag/vectors.py), so those bytes are mostly in
RssFile now: ``rss_anon_growth_mb_per_h_rag`` is the store's own memory.

Last line: ``rss_growth_mb_per_h_sniffer=N ..._detector ..._firewall ..._rag
rss_growth_mb_per_h_etcd=N (baseline) rag_index_growth_mb_per_h=N
rss_growth_mb_per_h_rag_excl_index=N rss_mb_end_* ... minutes=N samples=N flows=N
alerts=N rss_growth_mb_per_h_max=N`` (the max over the four services, the RAG store's
index growth included), and per service ``rss_anon_growth_mb_per_h_*``,
``rss_file_growth_mb_per_h_*``, ``rss_anon_mb_end_*``, ``rss_file_mb_end_*`` and
``rss_anon_growth_mb_per_h_max`` (the same max over the anonymous part alone).

    .venv/bin/python bench/soak.py                  # 10 minutes
    .venv/bin/python bench/soak.py --minutes 60
    .venv/bin/python bench/soak.py --quick          # 90 s, a smoke run
    .venv/bin/python bench/soak.py --minutes 60 --keep   # logs and samples.csv kept
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from lab.lifecycle import down  # noqa: E402
from lab.netns import list_namespaces  # noqa: E402
from lab.topology import DEFAULT_TOPOLOGY, load_topology  # noqa: E402

PREFIX = "mldb-soak"
MLD = str(_REPO / ".venv" / "bin" / "mld")
SERVICES = ("sniffer", "detector", "firewall", "rag")
SCENARIOS = """
scenarios:
  soak:
    description: steady benign traffic for the whole run (bench/soak.py adds the scans)
    duration_s: 600
    background: [http_browse, http_browse, http_browse_v6, dns_lookups, dns_lookups,
                 ssh_login, bulk_download, keepalive, ping]
    attacks: []
"""


def memory_mb(pid: int) -> tuple[float, float, float] | None:
    """(VmRSS, RssAnon, RssFile) of a process in MB, from /proc/PID/status; None if it is
    gone (or the kernel does not give the parts)."""
    keys = ("VmRSS", "RssAnon", "RssFile")
    got: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    got[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    if len(got) != len(keys):
        return None
    return got["VmRSS"], got["RssAnon"], got["RssFile"]


def rag_index_mb(gateway_ns: str, config: Path) -> float | None:
    """The RAG store's index size (its ``index_bytes`` health counter, through etcd)."""
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{gateway_ns}", MLD, "status", "--json", "--config",
         str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    for service in json.loads(proc.stdout)["services"]:
        if service["component"] == "rag" and "index_bytes" in service["counters"]:
            return float(service["counters"]["index_bytes"]) / 1e6
    return None


def nearest(points: list[tuple[float, float]], t: float) -> float:
    """The value of the sample nearest in time to ``t``."""
    return min(points, key=lambda p: abs(p[0] - t))[1]


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t s, MB) in MB per hour; 0 for fewer than 3 points."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / den * 3600


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak (10)")
    ap.add_argument("--quick", action="store_true", help="90 s (a smoke run)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period (5 s)")
    ap.add_argument("--attack-every", type=float, default=30.0, help="a port scan every N s")
    ap.add_argument("--prefix", default=PREFIX, help=f"the lab's namespace prefix ({PREFIX})")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's directory (services' logs, samples.csv of every RSS sample)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (the lab)", file=sys.stderr)
        return 1
    minutes = 1.5 if args.quick else args.minutes
    duration = minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="mld-soak-"))
    topo_path = tmp / "topology.yaml"
    topo_path.write_text(
        DEFAULT_TOPOLOGY.read_text().replace("prefix: mld-lab", f"prefix: {args.prefix}")
    )
    topo = load_topology(topo_path)
    (tmp / "scenarios.yaml").write_text(SCENARIOS)
    run_dir = tmp / "run"
    stack_state = run_dir / "dev" / "stack" / "stack.json"
    argv = [MLD, "lab", "dev", "--topology", str(topo_path), "--run-dir", str(run_dir),
            "--scenarios", str(tmp / "scenarios.yaml"), "--scenario", "soak", "--duration",
            str(duration), "--view", "lines", "--summary", str(tmp / "summary.json")]  # fmt: skip
    log = open(tmp / "dev.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    series: dict[str, list[tuple[float, float]]] = {s: [] for s in (*SERVICES, "etcd")}
    anon: dict[str, list[tuple[float, float]]] = {s: [] for s in series}
    mapped: dict[str, list[tuple[float, float]]] = {s: [] for s in series}
    index_mb: list[tuple[float, float]] = []
    next_status = 0.0
    pids: dict[str, int] = {}
    restarts = {s: 0 for s in (*SERVICES, "etcd")}
    t_start: float | None = None
    next_attack = next_print = 0.0
    attacker = topo.namespace("attacker")
    try:
        while proc.poll() is None:
            try:
                children = json.loads(stack_state.read_text())["children"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.5)
                continue
            if t_start is None:
                if not all(children.get(s, {}).get("pid") for s in (*SERVICES, "etcd")):
                    time.sleep(0.5)
                    continue
                t_start = time.monotonic()
                next_attack = t_start + 10
                print(f"soak: services up; sampling RSS every {args.sample_s:g} s for "
                      f"{minutes:g} min", flush=True)  # fmt: skip
            now = time.monotonic()
            for name in series:
                pid = children.get(name, {}).get("pid")
                if not pid:
                    continue
                if name in pids and pids[name] != pid:
                    restarts[name] += 1
                    # the slope of the last process only
                    series[name], anon[name], mapped[name] = [], [], []
                pids[name] = pid
                value = memory_mb(pid)
                if value is not None:
                    series[name].append((now - t_start, value[0]))
                    anon[name].append((now - t_start, value[1]))
                    mapped[name].append((now - t_start, value[2]))
            if now >= next_status:
                next_status = now + 30
                got = rag_index_mb(
                    topo.namespace("gateway"), run_dir / "dev" / "stack" / "mld.yaml"
                )
                if got is not None:
                    index_mb.append((now - t_start, got))
            if now >= next_attack and now - t_start < duration - 15:
                next_attack = now + args.attack_every
                subprocess.Popen(
                    ["ip", "netns", "exec", attacker, "nmap", "-sT", "-n", "-T4", "-Pn", "-p",
                     "1-300", "--max-retries", "1", "10.10.0.10"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            if now >= next_print:
                next_print = now + 60
                line = " ".join(f"{n}={series[n][-1][1]:.0f}MB" for n in series if series[n])
                print(f"soak: +{now - t_start:.0f} s {line}", flush=True)
            time.sleep(args.sample_s)
        code = proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        log.close()
        if list_namespaces(args.prefix):
            down(topo, run_dir)
    if code != 0 or t_start is None:
        print((tmp / "dev.log").read_text()[-4000:], file=sys.stderr)
        print(f"soak: mld lab dev exited with {code}", file=sys.stderr)
        return 1
    summary = json.loads((tmp / "summary.json").read_text())
    warmup = max(60.0, duration / 4)
    out: dict[str, str] = {}
    growth = {}
    for name, points in series.items():
        kept = [p for p in points if p[0] >= warmup] or points
        growth[name] = slope_per_hour(kept)
        out[f"rss_growth_mb_per_h_{name}"] = f"{growth[name]:.2f}"
    # Which memory grows: anonymous (the process's own) or file-backed (mapped files, the
    # page cache's: reclaimable, and not a leak of the process).
    anon_growth = {}
    for name in series:
        kept = [p for p in anon[name] if p[0] >= warmup] or anon[name]
        anon_growth[name] = slope_per_hour(kept)
        out[f"rss_anon_growth_mb_per_h_{name}"] = f"{anon_growth[name]:.2f}"
        kept = [p for p in mapped[name] if p[0] >= warmup] or mapped[name]
        out[f"rss_file_growth_mb_per_h_{name}"] = f"{slope_per_hour(kept):.2f}"
    # The RAG store keeps every event's vectors in memory (its FAISS indexes): that part of
    # its growth is the data it holds, measured from its own index_bytes counter.
    # (The index shrinks once, when it turns from flat to IVF,SQ8 at rag.ivf_threshold
    # events: a window that holds that moment mixes the two.)
    index_kept = [p for p in index_mb if p[0] >= warmup] or index_mb
    index_growth = slope_per_hour(index_kept)
    out["rag_index_growth_mb_per_h"] = f"{index_growth:.2f}"
    # RSS minus the index at each index sample (the RSS sample nearest in time).
    rest = [(t, nearest(series["rag"], t) - mb) for t, mb in index_kept if series["rag"]]
    out["rss_growth_mb_per_h_rag_excl_index"] = f"{slope_per_hour(rest):.2f}"
    for name, points in series.items():
        out[f"rss_mb_end_{name}"] = f"{points[-1][1]:.1f}" if points else "nan"
        out[f"rss_anon_mb_end_{name}"] = f"{anon[name][-1][1]:.1f}" if anon[name] else "nan"
        out[f"rss_file_mb_end_{name}"] = f"{mapped[name][-1][1]:.1f}" if mapped[name] else "nan"
    for name, count in restarts.items():
        out[f"restarts_{name}"] = str(count)
    counters = summary.get("services", {})
    out["minutes"] = f"{minutes:g}"
    out["samples"] = str(len(series["detector"]))
    out["flows"] = str(counters.get("sniffer", {}).get("counters", {}).get("pipeline.records", 0))
    out["alerts"] = str(summary.get("alerts", 0))
    out["blocks"] = str(summary.get("blocks", 0))
    out["rss_growth_mb_per_h_max"] = f"{max(growth[s] for s in SERVICES):.2f}"
    out["rss_anon_growth_mb_per_h_max"] = f"{max(anon_growth[s] for s in SERVICES):.2f}"
    with open(tmp / "samples.csv", "w") as f:
        f.write("service,t_s,rss_mb,anon_mb,file_mb\n")
        for name, points in series.items():
            for (t, rss), (_, a), (_, m) in zip(points, anon[name], mapped[name], strict=True):
                f.write(f"{name},{t:.1f},{rss:.2f},{a:.2f},{m:.2f}\n")
    if args.keep:
        print(f"soak: the run's files are kept in {tmp}", flush=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
