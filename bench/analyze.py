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

No JSON is written per flow in those two. Then, each as a whole process (start-up,
loading and writing included), on the same capture, in the same alternation:

- mld_analyze: ``mld detector analyze FILE --alerts-only --bundle B --out F --quiet`` (what
  ``mld analyze`` runs), with a config whose ``detector.model_cache_dir`` is the temp cache
  the bundle was compiled into, so the forests are loaded, not compiled, in the timed run.
  It writes every alert's JSON line with its explanation.
- suricata_et: ``suricata -r FILE -k none --runmode single`` with the ET Open rules of
  ../shared/data/rules/et-open (every ``*.rules`` file; loaded and failed rule counts are
  printed) and a config that logs only EVE ``alert`` events, with the address and port
  variables of Suricata's default config and the flow/stream memcaps of bench/offline.py.
  Rule loading is inside the timed run, as is Suricata's start-up.
- suricata: the same without rules (``-S /dev/null``): decoding, flows, streams and app-layer
  parsing only.

Without Suricata 7 (bench/setup-peers.sh installs it) the two Suricata contenders are
skipped, said so, and their keys print ``nan``.

The bundle: --bundle DIR; else detector/bundle when it has a manifest.json; else one is
trained for the run into a temp folder with detector.train.train_bundle on ../shared/data
plus the lab capture --train-lab (default build/lab-data/run-lab-dev, when present: the
shared captures alone train only ddos and scan, the lab run has all five families), with
config.detector.train's forest size (--quick: 6 trees, depth 8, as the test fixture).

    .venv/bin/python bench/analyze.py                   # ~1.5 minutes
    .venv/bin/python bench/analyze.py --bundle detector/bundle --repeats 5
    .venv/bin/python bench/analyze.py --quick           # smoke run on 50,000 packets
    .venv/bin/python bench/analyze.py --capture /tmp/mixed-1m.pcap   # a capture made elsewhere

Last line: ``analyze_pps=N flows_only_pps=N ratio=R flows=N packets=N`` (ratio = analyze /
flows_only), then ``mld_analyze_pps``, ``suricata_pps``, ``suricata_et_pps``,
``ratio_suricata`` and ``ratio_suricata_et`` (mld_analyze / each Suricata),
``suricata_et_rules`` (rules Suricata loaded), ``mld_alerts`` and ``suricata_et_alerts``
(lines written), ``mld_analyze_cpu_s`` and ``suricata_et_cpu_s`` (CPU seconds, user +
system, of each whole process and its children, median) and ``ratio_suricata_et_cpu``
(Suricata's over mld's: steadier than wall time on a loaded machine), then ``alerts``,
``score_s`` and ``forest_s`` (seconds in Scorer.score and in the forests, median per run),
``families``, ``n_trees``, ``max_depth`` (the largest), ``bundle_load_s`` (compile and
load; load only when the bundle was trained here) and ``load1`` (the 1-minute load average
at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import resource
import shutil
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
ET_OPEN = shared_data() / "rules" / "et-open"

# Alerts only, the variables ET Open's rules use (Suricata's default values), and the flow
# and stream memcaps of bench/offline.py (the default 32 MB sends Suricata into flow
# emergency mode on the bench capture). RULES is replaced by the rule file list.
SURICATA_YAML = """\
%YAML 1.1
---
# bench/analyze.py: EVE alerts only.
vars:
  address-groups:
    HOME_NET: "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]"
    EXTERNAL_NET: "!$HOME_NET"
    HTTP_SERVERS: "$HOME_NET"
    SMTP_SERVERS: "$HOME_NET"
    SQL_SERVERS: "$HOME_NET"
    DNS_SERVERS: "$HOME_NET"
    TELNET_SERVERS: "$HOME_NET"
    AIM_SERVERS: "$EXTERNAL_NET"
    DC_SERVERS: "$HOME_NET"
    DNP3_SERVER: "$HOME_NET"
    DNP3_CLIENT: "$HOME_NET"
    MODBUS_CLIENT: "$HOME_NET"
    MODBUS_SERVER: "$HOME_NET"
    ENIP_CLIENT: "$HOME_NET"
    ENIP_SERVER: "$HOME_NET"
  port-groups:
    HTTP_PORTS: "80"
    SHELLCODE_PORTS: "!80"
    ORACLE_PORTS: 1521
    SSH_PORTS: 22
    DNP3_PORTS: 20000
    MODBUS_PORTS: 502
    FILE_DATA_PORTS: "[$HTTP_PORTS,110,143]"
    FTP_PORTS: 21
    GENEVE_PORTS: 6081
    VXLAN_PORTS: 4789
    TEREDO_PORTS: 3544
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert
logging:
  default-log-level: notice
  outputs:
    - console:
        enabled: yes
flow:
  memcap: 2gb
  hash-size: 1048576
  prealloc: 100000
stream:
  memcap: 1gb
  reassembly:
    memcap: 2gb
RULES"""


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


# ---- whole processes: mld detector analyze, Suricata -----------------------------------------


def run_mld_analyze(pcap: Path, bundle: Path, cache: Path, tmp: Path, timeout: float) -> Any:
    """``mld detector analyze --alerts-only`` as one process, timed from start to exit."""
    cfg = tmp / "mld-bench.yaml"
    cfg.write_text(f"detector:\n  model_cache_dir: {json.dumps(str(cache))}\n")
    out = tmp / "alerts.jsonl"
    cmd = [sys.executable, "-m", "mld.cli", "detector", "analyze", str(pcap), "--alerts-only"]
    cmd += ["--config", str(cfg), "--bundle", str(bundle), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc, elapsed, cpu = _timed_run(cmd, timeout, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"analyze: mld detector analyze failed: {proc.stderr.strip()[-2000:]}")
    with out.open("rb") as f:
        alerts = sum(1 for _ in f)
    return {"seconds": elapsed, "cpu_s": cpu, "alerts": float(alerts)}


def _timed_run(
    cmd: list[str], timeout: float, **kwargs: Any
) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run cmd to its end: the process, its wall seconds and the CPU seconds (user + system)
    of it and its children (the steadier figure on a shared, loaded machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, elapsed, cpu


def suricata_version() -> str | None:
    """Suricata's version when a Suricata 7 is on PATH, else None."""
    exe = shutil.which("suricata")
    if exe is None:
        return None
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (7\.\S+)", out)
    return m.group(1) if m else None


def run_suricata(pcap: Path, tmp: Path, rules: list[Path], timeout: float) -> Any:
    """``suricata -r`` in single run mode as one process; its packets, loaded rules and alerts."""
    listed = "".join(f"  - {json.dumps(str(r))}\n" for r in rules)
    yaml = tmp / ("suricata-et.yaml" if rules else "suricata.yaml")
    yaml.write_text(SURICATA_YAML.replace("RULES", f"rule-files:\n{listed}" if rules else ""))
    logdir = tmp / ("suricata-et-log" if rules else "suricata-log")
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir()
    cmd = ["suricata", "-c", str(yaml), "-r", str(pcap), "-k", "none", "--runmode", "single"]
    cmd += ["-v", "-l", str(logdir)] + ([] if rules else ["-S", "/dev/null"])
    proc, elapsed, cpu = _timed_run(cmd, timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"analyze: suricata failed ({proc.returncode}): {output[-2000:]}")
    if "emergency mode" in output:
        print("suricata: warning: flow emergency mode (flows cut short)", flush=True)
    m = re.search(r"read \d+ files?, (\d+) packets", output)
    loaded = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", output)
    eve = logdir / "eve.json"
    with eve.open("rb") if eve.exists() else open(os.devnull, "rb") as f:
        alerts = sum(1 for _ in f)
    return {
        "seconds": elapsed,
        "cpu_s": cpu,
        "packets": float(m.group(1)) if m else math.nan,
        "rules": float(loaded.group(1)) if loaded else math.nan,
        "rules_failed": float(loaded.group(2)) if loaded else math.nan,
        "alerts": float(alerts),
    }


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.0f}"


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
    parser.add_argument(
        "--capture",
        type=Path,
        help="use this bench/make_capture.py capture (default: build/bench/mixed-<N>.pcap)",
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from make_capture import capture_path, ensure_capture

    if args.quick:
        args.packets, args.repeats = 50_000, 1
    pcap = args.capture if args.capture is not None else capture_path(args.packets)
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
        sv = suricata_version()
        rules = sorted(ET_OPEN.glob("*.rules")) if ET_OPEN.is_dir() else []
        if sv is None:
            print("suricata: Suricata 7 is not installed (run bench/setup-peers.sh): nan")
        else:
            print(f"suricata: {sv}, runmode single, EVE alerts only")
            if not rules:
                print(f"suricata: no ET Open rules in {ET_OPEN}: suricata_et is nan")
        kinds = ["analyze", "flows_only", "mld_analyze"]
        kinds += ["suricata_et", "suricata"] if sv is not None else []
        if sv is not None and not rules:
            kinds.remove("suricata_et")
        pps: dict[str, list[float]] = {k: [] for k in kinds}
        last: dict[str, dict[str, float]] = {}
        spent: dict[str, list[float]] = {"score_s": [], "forest_s": []}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(args.repeats):
            for kind in kinds:
                detail = ""
                if kind in ("analyze", "flows_only"):
                    got = _run_worker(kind, pcap, bundle, cache, timeout)
                elif kind == "mld_analyze":
                    got = run_mld_analyze(pcap, bundle, cache, Path(tmp), timeout)
                    got["packets"] = last["analyze"]["packets"]
                    detail = f", {got['alerts']:.0f} alert lines"
                else:
                    got = run_suricata(
                        pcap, Path(tmp), rules if kind == "suricata_et" else [], timeout
                    )
                    if math.isnan(got["packets"]):
                        got["packets"] = float(counts["packets"])
                    detail = f", {got['alerts']:.0f} alerts"
                    if kind == "suricata_et":
                        detail += (
                            f", {got['rules']:.0f} rules loaded, {got['rules_failed']:.0f} failed"
                        )
                rate = got["packets"] / got["seconds"]
                pps[kind].append(rate)
                last[kind] = got
                if kind == "analyze":
                    spent["score_s"].append(got["score_s"])
                    spent["forest_s"].append(got["forest_s"])
                    detail = (
                        f", Scorer.score {got['score_s']:.2f} s of which forests "
                        f"{got['forest_s']:.2f} s, {got['alerts']:.0f} alerts"
                    )
                flows = f", {got['flows']:.0f} flows" if "flows" in got else ""
                if "cpu_s" in got:
                    cpu[kind].append(got["cpu_s"])
                    detail += f", {got['cpu_s']:.2f} s CPU"
                print(
                    f"run {rep + 1}/{args.repeats} {kind:11} {rate:10,.0f} pkt/s "
                    f"({got['seconds']:.2f} s{flows}{detail})",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in pps.items()}
    a, f = last["analyze"], last["flows_only"]
    if a["flows"] != f["flows"] or a["packets"] != f["packets"]:
        print(
            f"warning: analyze saw {a['flows']:.0f} flows / {a['packets']:.0f} packets, "
            f"flows_only {f['flows']:.0f} / {f['packets']:.0f}"
        )
    nan = math.nan
    mld = med["mld_analyze"]
    sur, sur_et = med.get("suricata", nan), med.get("suricata_et", nan)
    et = last.get("suricata_et", {})
    load1 = os.getloadavg()[0]
    cpu_med = {k: statistics.median(v) if v else nan for k, v in cpu.items()}
    mld_cpu, et_cpu = cpu_med["mld_analyze"], cpu_med.get("suricata_et", nan)
    print(
        f"median: analyze {med['analyze']:,.0f} pkt/s, flows only {med['flows_only']:,.0f} "
        f"pkt/s ({med['analyze'] / med['flows_only']:.3f}); whole processes: mld detector "
        f"analyze --alerts-only {mld:,.0f} pkt/s, suricata + ET Open {sur_et:,.0f} pkt/s "
        f"({mld / sur_et:.2f}x), suricata without rules {sur:,.0f} pkt/s ({mld / sur:.2f}x); "
        f"load average {load1:.2f}"
    )
    print(
        f"analyze_pps={med['analyze']:.0f} flows_only_pps={med['flows_only']:.0f} "
        f"ratio={med['analyze'] / med['flows_only']:.3f} flows={a['flows']:.0f} "
        f"packets={a['packets']:.0f} alerts={a['alerts']:.0f} "
        f"score_s={statistics.median(spent['score_s']):.2f} "
        f"forest_s={statistics.median(spent['forest_s']):.2f} families={families} "
        f"n_trees={trees} max_depth={depth} bundle_load_s={load_s:.1f} "
        f"mld_analyze_pps={mld:.0f} suricata_pps={_fmt(sur)} ratio_suricata={mld / sur:.3f} "
        f"suricata_et_rules={_fmt(et.get('rules', nan))} "
        f"mld_alerts={last['mld_analyze']['alerts']:.0f} "
        f"suricata_et_alerts={_fmt(et.get('alerts', nan))} "
        f"mld_analyze_cpu_s={mld_cpu:.2f} suricata_et_cpu_s={et_cpu:.2f} "
        f"ratio_suricata_et_cpu={et_cpu / mld_cpu:.3f} load1={load1:.2f} "
        f"suricata_et_pps={_fmt(sur_et)} ratio_suricata_et={mld / sur_et:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
