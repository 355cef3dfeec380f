"""Packets per second through a veth pair: the XDP flow program vs an empty XDP program.

Two network namespaces made for the run (``mldb<pid>t``, ``mldb<pid>r``, removed in
``finally``, also on Ctrl-C and SIGTERM) are joined by a veth pair tx0 <-> rx0 (10.211.0.1
-> 10.211.0.2). TSO, GSO and GRO are off on tx0. The sender, bench/pktsend.c (compiled here
into build/bench/pktsend), writes prebuilt 60-byte UDP frames to tx0 through an AF_PACKET
socket with PACKET_QDISC_BYPASS and sendmmsg, as fast as it can, a bounded number of them,
with the UDP source port cycling over --ports values (so the flow program holds that many
flows). It is pinned to CPU 0. A veth has no wire: tx0's transmit hands each frame to rx0's
receive path (with an XDP program on rx0, through rx0's NAPI ring, where XDP runs), so the
sender's CPU does the receiving work too, and the rate is that of send + receive.

Variants, all on rx0 in the same XDP mode, in the same run, alternated, --repeats times,
median:

  none        no XDP program
  empty       ``return XDP_PASS;`` (BCC)
  flow        the flow program (xdp.FlowMonitor), its ring buffer polled meanwhile
  drop        the flow program with the sender's address in its blocklist (xdp.Blocklist)
  empty_drop  ``return XDP_DROP;`` (BCC)

The packets that reached rx0 are counted on rx0: its rx_packets (``ip -s -j link``), which
veth counts as it hands a frame over, before XDP, so XDP drops are included. The XDP drops
themselves are reported from veth's ``rx_queue_0_xdp_drops`` (``ethtool -S``, native mode)
and the flow program's ``blocked_packets``. Frames that tx0 could not hand over (rx0's ring
full) would show as tx0 drops; the sender does the receive work itself, so there are none in
practice. The rate is packets reached / the sender's time. Nothing listens on UDP port 9 in
rx's namespace, so packets that XDP passes go up the stack and are dropped by UDP after the
socket lookup (the same for none, empty and flow); the drop variants stop them at XDP.

    .venv/bin/python bench/live.py              # full run, native XDP (~2 minutes)
    .venv/bin/python bench/live.py --mode generic
    .venv/bin/python bench/live.py --quick      # smoke run

Last line: ``flow_pps=N empty_pps=N ratio_empty=R drop_pps=N empty_drop_pps=N`` (ratio_empty
= flow / empty), then ``none_pps``, ``ratio_drop`` (drop / empty_drop), ``mode`` and
``flows`` (flow records the flow program exported in its last run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench"
PKTSEND_SRC = Path(__file__).resolve().parent / "pktsend.c"
PKTSEND = BUILD / "pktsend"
TX_ADDR, RX_ADDR = "10.211.0.1", "10.211.0.2"
VARIANTS = ("none", "empty", "flow", "drop", "empty_drop")
EMPTY_PROGRAMS = """
int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }
"""


# ---- the XDP side: a worker process inside the receiver's namespace ------------------------


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def worker(kind: str, iface: str, mode: str, pin_dir: str, ready: Path, out: Path) -> int:
    """Attach one variant's program to iface, report ready, poll until SIGTERM, detach."""
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    result: dict[str, Any] = {}
    if kind in ("flow", "drop"):
        from xdp import FlowMonitor

        mon = FlowMonitor(
            [iface], mode=mode, pin_dir=pin_dir, max_flows=65536, sweep_interval_s=1.0
        )
        events = 0
        try:
            mon.attach()
            ready.write_text(json.dumps({"mode": mon.modes[iface]}))
            while True:
                events += len(mon.poll(100)) // mon.record_size
        except SystemExit:
            pass
        finally:
            if mon.modes:
                events += len(mon.flush()) // mon.record_size
                result = mon.stats()
                result["events"] = events
            mon.close()
    else:
        os.environ.setdefault("BCC_KERNEL_SOURCE", str(REPO / "build" / "kernel-headers"))
        from bcc import BPF

        flag = BPF.XDP_FLAGS_DRV_MODE if mode == "native" else BPF.XDP_FLAGS_SKB_MODE
        bpf = BPF(text=EMPTY_PROGRAMS)
        fn = bpf.load_func("xdp_pass" if kind == "empty" else "xdp_drop", BPF.XDP)
        BPF.attach_xdp(iface, fn, flag)
        try:
            ready.write_text(json.dumps({"mode": mode}))
            while True:
                time.sleep(0.2)
        except SystemExit:
            pass
        finally:
            BPF.remove_xdp(iface, flag)
            bpf.cleanup()
    out.write_text(json.dumps(result))
    return 0


# ---- the namespaces ------------------------------------------------------------------------


def sh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Pair:
    ns_tx: str
    ns_rx: str
    tx_mac: str = ""
    rx_mac: str = ""

    def counters(self) -> dict[str, int]:
        """rx0's packet counters and XDP counters, tx0's drops."""
        out: dict[str, int] = {}
        for ns, dev in ((self.ns_rx, "rx0"), (self.ns_tx, "tx0")):
            link = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev))[0]
            for direction in ("rx", "tx"):
                for k, v in link["stats64"][direction].items():
                    out[f"{dev}.{direction}_{k}"] = int(v)
            text = sh("ip", "netns", "exec", ns, "ethtool", "-S", dev, check=False)
            for name, value in re.findall(r"^\s*(\S+):\s*(\d+)\s*$", text, re.M):
                out[f"{dev}.{name}"] = out.get(f"{dev}.{name}", 0) + int(value)
        return out


@contextlib.contextmanager
def veth_pair() -> Iterator[Pair]:
    tag = f"mldb{os.getpid()}"
    pair = Pair(f"{tag}t", f"{tag}r")
    try:
        sh("ip", "netns", "add", pair.ns_tx)
        sh("ip", "netns", "add", pair.ns_rx)
        sh("ip", "link", "add", "tx0", "netns", pair.ns_tx, "type", "veth",
           "peer", "name", "rx0", "netns", pair.ns_rx)  # fmt: skip
        for ns, dev, addr in ((pair.ns_tx, "tx0", TX_ADDR), (pair.ns_rx, "rx0", RX_ADDR)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", pair.ns_tx, "ethtool", "-K", "tx0",
           "tso", "off", "gso", "off", "gro", "off", check=False)  # fmt: skip
        for ns, dev in ((pair.ns_tx, "tx0"), (pair.ns_rx, "rx0")):
            mac = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", dev))[0]["address"]
            if dev == "tx0":
                pair.tx_mac = mac
            else:
                pair.rx_mac = mac
        yield pair
    finally:
        for ns in (pair.ns_tx, pair.ns_rx):
            sh("ip", "netns", "del", ns, check=False)


# ---- one run -------------------------------------------------------------------------------


def build_sender() -> Path:
    if not PKTSEND.exists() or PKTSEND.stat().st_mtime < PKTSEND_SRC.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("cc") or shutil.which("gcc") or "cc"
        sh(cc, "-O2", "-Wall", "-o", str(PKTSEND), str(PKTSEND_SRC))
    return PKTSEND


@contextlib.contextmanager
def attached(kind: str, pair: Pair, mode: str, pin_dir: str, tmp: Path) -> Iterator[dict[str, Any]]:
    """The variant's program on rx0 for the duration; yields its info, then its stats."""
    info: dict[str, Any] = {"mode": mode}
    if kind == "none":
        yield info
        return
    ready, out = tmp / f"{kind}.ready", tmp / f"{kind}.json"
    ready.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    cmd = ["nsenter", f"--net=/run/netns/{pair.ns_rx}", sys.executable, __file__]
    cmd += ["--worker", kind, "--mode", mode, "--pin-dir", pin_dir, "--tmp", str(tmp)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"{kind}: the XDP worker did not attach: {err[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.05)
        info.update(json.loads(ready.read_text()))
        if kind == "drop":
            from xdp import Blocklist

            with Blocklist(pin_dir) as bl:
                bl.add(f"{TX_ADDR}/32")
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if kind == "drop":
            with contextlib.suppress(Exception):
                from xdp import Blocklist

                with Blocklist(pin_dir) as bl:
                    bl.remove(f"{TX_ADDR}/32")
        if out.exists():
            info["stats"] = json.loads(out.read_text())


def send(pair: Pair, count: int, ports: int) -> tuple[int, float]:
    cmd = ["ip", "netns", "exec", pair.ns_tx, "taskset", "-c", "0", str(PKTSEND), "tx0"]
    cmd += [pair.tx_mac, pair.rx_mac, TX_ADDR, RX_ADDR, str(count), str(ports)]
    m = re.search(r"sent=(\d+) seconds=([\d.]+)", sh(*cmd))
    if not m:
        raise RuntimeError("pktsend printed no result")
    return int(m.group(1)), float(m.group(2))


def run_once(
    kind: str,
    pair: Pair,
    mode: str,
    pin_dir: str,
    tmp: Path,
    count: int,
    ports: int,
    verbose: bool = False,
) -> dict[str, Any]:
    with attached(kind, pair, mode, pin_dir, tmp) as info:
        before = pair.counters()
        sent, seconds = send(pair, count, ports)
        time.sleep(0.1)  # let the NAPI ring drain
        after = pair.counters()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    if verbose:
        print(f"{kind} counter deltas: { ({k: v for k, v in delta.items() if v}) }", flush=True)
    reached = delta.get("rx0.rx_packets", 0)
    xdp_drops = delta.get("rx0.rx_queue_0_xdp_drops", 0)
    if kind in ("flow", "drop"):
        stats = info.get("stats", {})
        info["xdp_packets"] = stats.get("packets", 0)
        info["blocked"] = stats.get("blocked_packets", 0)
        info["flows"] = stats.get("events", 0)
    info.update(
        sent=sent, seconds=seconds, xdp_drops=xdp_drops, reached=reached,
        tx_dropped=delta.get("tx0.tx_dropped", 0), pps=reached / seconds, delta=delta,
    )  # fmt: skip
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: .venv/bin/python bench/live.py --mode generic --packets 2000000",
    )
    parser.add_argument("--packets", type=int, default=3_000_000, help="packets per run")
    parser.add_argument("--ports", type=int, default=4096, help="UDP source ports (flows)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--mode", choices=("native", "generic"), default="native")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("-v", "--verbose", action="store_true", help="print counter deltas")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--pin-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        tmp = args.tmp
        return worker(
            args.worker, "rx0", args.mode, args.pin_dir, tmp / f"{args.worker}.ready",
            tmp / f"{args.worker}.json",
        )  # fmt: skip
    if os.geteuid() != 0:
        raise SystemExit("live: needs root (namespaces, XDP); run as root")
    if args.quick:
        args.packets, args.repeats = 200_000, 1
    signal.signal(signal.SIGTERM, _raise_exit)
    build_sender()
    pin_dir = f"/sys/fs/bpf/mld-bench-{os.getpid()}"
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in VARIANTS}
    try:
        with tempfile.TemporaryDirectory(prefix="mld-bench-live-") as t, veth_pair() as pair:
            tmp = Path(t)
            print(
                f"veth {pair.ns_tx}/tx0 -> {pair.ns_rx}/rx0, {args.packets} packets a run, "
                f"{args.ports} source ports, XDP mode {args.mode}",
                flush=True,
            )
            for rep in range(args.repeats):
                for kind in VARIANTS:
                    r = run_once(
                        kind, pair, args.mode, pin_dir, tmp, args.packets, args.ports,
                        args.verbose,
                    )  # fmt: skip
                    results[kind].append(r)
                    extra = ""
                    if kind in ("flow", "drop"):
                        extra = (
                            f", program saw {r['xdp_packets']}, blocked {r['blocked']}, "
                            f"{r['flows']} flow records"
                        )
                    print(
                        f"run {rep + 1}/{args.repeats} {kind:10} {r['pps']:12,.0f} pkt/s "
                        f"(sent {r['sent']} in {r['seconds']:.2f} s, reached rx0 {r['reached']}, "
                        f"veth XDP drops {r['xdp_drops']} (native only), "
                        f"tx0 dropped {r['tx_dropped']}; mode {r['mode']}{extra})",
                        flush=True,
                    )
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            for p in Path(pin_dir).glob("*"):
                p.unlink()
            Path(pin_dir).rmdir()
    med = {k: statistics.median(r["pps"] for r in v) for k, v in results.items()}
    modes = {r["mode"] for v in results.values() for r in v if r["mode"]}
    flows = results["flow"][-1].get("flows", 0)
    print(
        f"median: none {med['none']:,.0f}, empty {med['empty']:,.0f}, flow {med['flow']:,.0f}, "
        f"drop (blocklist) {med['drop']:,.0f}, empty_drop {med['empty_drop']:,.0f} pkt/s"
    )
    print(
        f"flow_pps={med['flow']:.0f} empty_pps={med['empty']:.0f} "
        f"ratio_empty={med['flow'] / med['empty']:.3f} drop_pps={med['drop']:.0f} "
        f"empty_drop_pps={med['empty_drop']:.0f} none_pps={med['none']:.0f} "
        f"ratio_drop={med['drop'] / med['empty_drop']:.3f} mode={'/'.join(sorted(modes))} "
        f"flows={flows}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
