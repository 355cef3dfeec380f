"""Packets per second from a pcap to flow records: ML Defender's flow engine vs Suricata 7
and nfstream, on the same capture, in the same run.

The capture is build/bench/mixed-1m.pcap (bench/make_capture.py: 1,000,000 packets of the
real nDPI and attack captures, replayed in rounds with shifted addresses so the rounds are
distinct flows, about 360,000 of them). Every contender runs in its own process, one after
the other, alternating, --repeats times; the median is reported. The file is read once
before the first run so every run reads it from the page cache.

- mld: ``native.FlowEngine(idle 30 s, active 300 s, max_flows 262144, batch 4096)`` (the
  sniffer's defaults), ``feed_file`` iterated to the end, then ``finish()`` for the flows
  still open: the engine alone, timed from the first call to the end of ``finish()``.
  ``mld_full_pps`` adds the sniffer's step on every batch (sniffer.pipeline.FlowPipeline
  with default settings: columns, per-source context, fast rules, serialized FlowRecords).
- suricata: ``suricata -r FILE -k none --runmode single -S /dev/null`` with a bench config
  (build/bench/suricata.yaml) that logs only flow records (eve ``flow``) and final stats,
  and raises the flow and stream memcaps so Suricata never enters flow emergency mode on
  this capture (with the default 32 MB it does, and then cuts flows short). Run mode single:
  one packet thread, like the mld engine, on this 2-core machine. No rules are loaded, but
  Suricata still decodes, tracks TCP streams and detects and parses application protocols
  (its defaults). Timed as the whole process (start-up included, reported separately as
  ``suricata_startup_s``, measured on a one-packet capture); the packet count is its own
  ("pcap: read 1 file, N packets").
- nfstream: ``NFStreamer(source=FILE, n_meters=1, n_dissections=0,
  statistical_analysis=True, idle_timeout=30, active_timeout=300, decode_tunnels=False)``,
  iterated to the end: one metering process (plus the Python process that receives the
  flows), no nDPI dissection, with the per-direction packet size and inter-arrival
  statistics that the mld engine also computes. Timed from construction to the last flow.
  It runs from build/bench-venv. The packet count is the capture's.

A peer that is not installed (bench/setup-peers.sh installs them) prints ``nan``.

    .venv/bin/python bench/offline.py              # full run (~2 minutes)
    .venv/bin/python bench/offline.py --quick      # smoke run on 50,000 packets

Last line: ``mld_pps=N suricata_pps=N nfstream_pps=N ratio_suricata=R`` (mld / suricata),
then ``ratio_nfstream``, ``mld_full_pps``, ``suricata_startup_s``, ``packets``, ``flows``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench"
PEER_VENV_PY = REPO / "build" / "bench-venv" / "bin" / "python"

# The sniffer's defaults (sniffer/config.py CaptureConfig), used by every contender.
IDLE_TIMEOUT_S = 30.0
ACTIVE_TIMEOUT_S = 300.0
MAX_FLOWS = 262144
BATCH_SIZE = 4096

SURICATA_YAML = """\
%YAML 1.1
---
# bench/offline.py: flow records only, big enough tables for the bench capture.
stats:
  enabled: yes
  interval: 3600
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - flow
  - stats:
      enabled: yes
      filename: stats.log
      totals: yes
      threads: no
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
"""


# ---- workers (run in their own processes) --------------------------------------------------


def _worker_mld(path: str, full: bool) -> dict[str, float]:
    import native

    engine = native.FlowEngine(
        idle_timeout_s=IDLE_TIMEOUT_S,
        active_timeout_s=ACTIVE_TIMEOUT_S,
        max_flows=MAX_FLOWS,
        batch_size=BATCH_SIZE,
    )
    pipeline = _sniffer_pipeline() if full else None
    flows = 0
    started = time.perf_counter()
    for events in engine.feed_file(path):
        flows += len(events)
        if pipeline is not None:
            pipeline.process(events, "bench")
    events = engine.finish()
    flows += len(events)
    if pipeline is not None and len(events):
        pipeline.process(events, "bench")
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "packets": float(engine.stats["packets"]), "flows": float(flows)}


def _sniffer_pipeline() -> Any:
    """The sniffer's step from flow events to serialized FlowRecords, or None."""
    try:
        from sniffer.config import SnifferConfig
        from sniffer.pipeline import FlowPipeline
    except ImportError:
        return None
    return FlowPipeline(SnifferConfig())


def _worker_nfstream(path: str) -> dict[str, float]:
    from nfstream import NFStreamer

    started = time.perf_counter()
    streamer = NFStreamer(
        source=path,
        decode_tunnels=False,
        n_meters=1,
        n_dissections=0,
        statistical_analysis=True,
        idle_timeout=int(IDLE_TIMEOUT_S),
        active_timeout=int(ACTIVE_TIMEOUT_S),
        performance_report=0,
    )
    flows = sum(1 for _ in streamer)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "packets": float("nan"), "flows": float(flows)}


# ---- contenders ----------------------------------------------------------------------------


def _run_worker(python: Path | str, kind: str, path: Path, timeout: float) -> dict[str, float]:
    proc = subprocess.run(
        [str(python), __file__, "--worker", kind, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def mld_available() -> str | None:
    """None when the native engine imports; otherwise why not."""
    proc = subprocess.run(
        [sys.executable, "-c", "import native; native.FlowEngine"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def suricata_version() -> str | None:
    exe = shutil.which("suricata")
    if exe is None:
        return None
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (7\.\S+)", out)
    return m.group(1) if m else None


def nfstream_version() -> str | None:
    if not PEER_VENV_PY.exists():
        return None
    proc = subprocess.run(
        [str(PEER_VENV_PY), "-c", "import nfstream; print(nfstream.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_suricata(path: Path, timeout: float) -> dict[str, float]:
    yaml = BUILD / "suricata.yaml"
    yaml.write_text(SURICATA_YAML)
    with tempfile.TemporaryDirectory(prefix="mld-bench-suricata-") as logdir:
        cmd = ["suricata", "-c", str(yaml), "-r", str(path), "-k", "none"]
        cmd += ["--runmode", "single", "-S", "/dev/null", "-l", logdir]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        elapsed = time.perf_counter() - started
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"suricata failed ({proc.returncode}): {output[-2000:]}")
        if "emergency mode" in output:
            print("suricata: warning: flow emergency mode (flows cut short)", flush=True)
        m = re.search(r"read \d+ files?, (\d+) packets", output)
        packets = float(m.group(1)) if m else float("nan")
        eve = Path(logdir) / "eve.json"
        flows = sum(1 for _ in eve.open()) if eve.exists() else 0
    return {"seconds": elapsed, "packets": packets, "flows": float(flows)}


def suricata_startup(path: Path, timeout: float) -> float:
    """Seconds Suricata takes on a one-packet capture: its fixed start-up and shutdown cost
    (an empty capture is an error to Suricata)."""
    one = BUILD / "one-packet.pcap"
    with path.open("rb") as f:
        header = f.read(24)
        record = f.read(16)
        caplen = int.from_bytes(record[8:12], "little")
        one.write_bytes(header + record + f.read(caplen))
    return run_suricata(one, timeout)["seconds"]


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(1 << 22):
            pass


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: .venv/bin/python bench/offline.py --repeats 5",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="capture size")
    parser.add_argument("--quick", action="store_true", help="smoke run on 50,000 packets")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "PCAP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, path = args.worker
        if kind == "nfstream":
            result = _worker_nfstream(path)
        else:
            result = _worker_mld(path, full=kind == "mld_full")
        print(json.dumps(result))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from make_capture import capture_path, ensure_capture

    if args.quick:
        args.packets, args.repeats = 50_000, 1
    pcap = capture_path(args.packets)
    counts = ensure_capture(pcap, args.packets)
    known = float(counts["packets"])
    timeout = 60 + args.packets / 5_000
    print(f"capture: {pcap.name}: {counts['packets']} packets, ~{counts['flows']} 5-tuples")

    contenders: dict[str, object] = {}
    why = mld_available()
    if why is None:
        contenders["mld"] = lambda: _run_worker(sys.executable, "mld", pcap, timeout)
        if _sniffer_pipeline() is not None:
            contenders["mld_full"] = lambda: _run_worker(sys.executable, "mld_full", pcap, timeout)
        else:
            print("mld_full: sniffer.pipeline is not available: nan")
    else:
        print(f"mld: native.FlowEngine is not available ({why}): nan")
    sv = suricata_version()
    if sv:
        print(f"suricata: {sv}, runmode single, no rules, eve flow records only")
        contenders["suricata"] = lambda: run_suricata(pcap, timeout)
    else:
        print("suricata: Suricata 7 not installed (run bench/setup-peers.sh): nan")
    nv = nfstream_version()
    if nv:
        print(f"nfstream: {nv} from {PEER_VENV_PY.parent.parent.relative_to(REPO)}")
        contenders["nfstream"] = lambda: _run_worker(PEER_VENV_PY, "nfstream", pcap, timeout)
    else:
        print("nfstream: not installed in build/bench-venv (run bench/setup-peers.sh): nan")

    warm(pcap)
    pps: dict[str, list[float]] = {k: [] for k in contenders}
    flows: dict[str, float] = {}
    for rep in range(args.repeats):
        for kind, run in contenders.items():
            got = run()  # type: ignore[operator]
            packets = got["packets"] if not math.isnan(got["packets"]) else known
            if packets != known:
                print(f"{kind}: warning: counted {packets:.0f} packets of {known:.0f}")
            rate = packets / got["seconds"]
            pps[kind].append(rate)
            flows[kind] = got["flows"]
            print(
                f"run {rep + 1}/{args.repeats} {kind:9} {rate:12,.0f} pkt/s "
                f"({got['seconds']:.2f} s, {got['flows']:.0f} flow records)",
                flush=True,
            )
    med = {k: statistics.median(v) if v else float("nan") for k, v in pps.items()}
    mld = med.get("mld", float("nan"))
    sur = med.get("suricata", float("nan"))
    nfs = med.get("nfstream", float("nan"))
    startup = suricata_startup(pcap, timeout) if "suricata" in contenders else float("nan")
    print(
        f"median: mld {mld:,.0f} pkt/s, suricata {sur:,.0f} pkt/s "
        f"(start-up {startup:.2f} s of it), nfstream {nfs:,.0f} pkt/s"
    )
    print(
        f"mld_pps={_fmt(mld)} suricata_pps={_fmt(sur)} nfstream_pps={_fmt(nfs)} "
        f"ratio_suricata={mld / sur:.3f} ratio_nfstream={mld / nfs:.3f} "
        f"mld_full_pps={_fmt(med.get('mld_full', float('nan')))} "
        f"suricata_startup_s={startup:.3f} packets={known:.0f} flows={counts['flows']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
