#!/usr/bin/env python3
"""Flood: a forged-source SYN flood at the gateway, with a real scan hidden in it.

Builds a lab of its own (namespace prefix ``fl4``; ``--prefix``), runs the whole stack
there with ``mld gateway run --outside outside --inside inside`` (sniffer with XDP on both
NICs and overload mode on, its default; detector; firewall on the XDP backend; RAG; local
etcd), then, in one run:

* the attacker (203.0.113.66) floods the server (10.10.0.10:80) through the gateway with
  ``hping3 --flood --rand-source -S`` for ``--seconds`` (20 s; 8 s with ``--quick``);
* ``--scan-at`` seconds in (5 s; 3 s with ``--quick``) the workstation (203.0.113.20), a
  host of its own with its real address, scans the server with ``nmap -sT`` (a connect
  scan: it completes handshakes on the open ports, see the firewall settings below);
* all along, the benign client (203.0.113.10) fetches http://10.10.0.10/ every 0.2 s.

Reported: the flood's packets/s (what hping3 says it sent), what the gateway's XDP program
saw, the records it exported, the new flows it summarised into flood records, and what was
dropped, per reason (``evicted`` by the full flow table, ``final_dropped`` and
``interim_dropped`` for a full ring buffer, ``summary_lost`` for a full summary map, the
publisher's ``records_dropped``); the scan's time to its first alert and to its block being
applied (from the start of nmap, read from the EVE log and the firewall's decision log as
they are written); and the benign client's fetches that worked. ``lost_uncounted`` is the
sniffer's own check (xdp.FlowMonitor.stats): new flows neither exported, summarised, still
in the table, nor counted as lost, read once the flood has stopped.

Firewall settings, chosen and reported: ``block_unverified`` stays false (its default): a
SYN scan's source is only blocked once it completed a handshake, which a forged source never
does, so none of the flood's millions of forged addresses can be turned into blocks; that is
why the scan is a connect scan (nmap -sT), as an attacker who wants to see the services
would run. The outside segment is the gateway's own, which the firewall would allowlist:
``auto_allowlist`` leaves it out. Block rate limits stay at their defaults.

Target: the scan blocked within 2 s of its start while the flood runs, the benign client's
fetches all working, nothing lost without a count. Last line:
``flood_pps=N scan_block_s=S lost_uncounted=N``, then ``scan_detect_s``, ``xdp_packets``,
``exported``, ``summarised``, ``flood_records``, ``dropped_counted`` (the sum of the
reasons on the line before), ``client_ok`` and ``client_failed``. The exit status is 2 when
the scan was not blocked or something was lost without a count.

    .venv/bin/python bench/flood.py            # 20 s flood, scan 5 s in
    .venv/bin/python bench/flood.py --quick    # 8 s flood, scan 3 s in (the smoke test)
    .venv/bin/python bench/flood.py --no-overload   # the same without overload mode
    .venv/bin/python bench/flood.py --sniffer-cost  # the sniffer's cost per flood record
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.common import GatewayLab, decisions, gateway_lab, services, wait  # noqa: E402
from lab.topology import Topology  # noqa: E402

PREFIX = "fl4"
SERVER, SCANNER, CLIENT = "10.10.0.10", "203.0.113.20", "203.0.113.10"
# The sniffer's counters reported (xdp.FlowMonitor.stats, sniffer/overload.py).
DROP_KEYS = ("evicted", "final_dropped", "interim_dropped", "summary_lost", "src_summary_lost")


def ns_cmd(topo: Topology, host: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{topo.namespace(host)}", *args]


def nic_drops(topo: Topology, nic: str) -> int:
    """Packets the gateway's NIC dropped before its XDP program saw them (veth: the
    receive ring was full), from the kernel's link counters."""
    out = subprocess.run(ns_cmd(topo, "gateway", "ip", "-s", "-j", "link", "show", nic),
                         capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    stats = json.loads(out.stdout)[0]["stats64"]
    return int(stats["rx"]["dropped"]) + int(stats["rx"].get("missed", 0))


def counters(gw_ns: str, config: Path, component: str) -> dict[str, float]:
    for s in services(gw_ns, config):
        if s["component"] == component:
            items = s.get("counters", {}).items()
            return {k: float(v) for k, v in items if isinstance(v, int | float)}
    return {}


class Watch(threading.Thread):
    """Notes the wall-clock time the scanner's first alert and first applied block appear
    (the EVE log and the decision log are read every 0.1 s while the run goes on)."""

    def __init__(self, alerts: Path, log_db: Path) -> None:
        super().__init__(daemon=True)
        self.alerts, self.log_db = alerts, log_db
        self.alert_ts: float | None = None
        self.block_ts: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        offset = 0
        while not self.done.is_set() and (self.alert_ts is None or self.block_ts is None):
            if self.alert_ts is None and self.alerts.exists():
                with self.alerts.open() as f:
                    f.seek(offset)
                    chunk = f.read()
                whole = chunk[: chunk.rfind("\n") + 1]
                offset += len(whole.encode())
                for line in whole.splitlines():
                    e = json.loads(line)
                    if e.get("event_type") == "alert" and e.get("src_ip") == SCANNER:
                        self.alert_ts = time.time()
                        break
            if self.block_ts is None:
                for d in decisions(self.log_db):
                    if (str(d["addr"]) == SCANNER and d["action"] in ("block", "extend")
                            and d["outcome"] == "applied"):  # fmt: skip
                        # The row's own time: when the firewall applied the block.
                        self.block_ts = float(str(d["ts"]))
                        break
            self.done.wait(0.1)


class Client(threading.Thread):
    """The benign client: one HTTP fetch every 0.2 s until stopped; counts what worked."""

    def __init__(self, topo: Topology) -> None:
        super().__init__(daemon=True)
        self.topo = topo
        self.ok = self.failed = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        cmd = ns_cmd(self.topo, "client", "curl", "-s", "-o", "/dev/null", "-m", "3",
                     "-w", "%{http_code}", f"http://{SERVER}/")  # fmt: skip
        while not self.stop_event.is_set():
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            if out.stdout.strip() == "200":
                self.ok += 1
            else:
                self.failed += 1
            self.stop_event.wait(0.2)


def sniffer_cost(n: int = 50000) -> float:
    """Seconds per record of the live sniffer's pipeline (context, fast rules, packed rows)
    on what a forged-source SYN flood hands it: one-packet SYN flows from n sources, to one
    server. The measurement behind summarising in XDP (sniffer/overload.py)."""
    import numpy as np

    from native.structs import CONSTANTS as C
    from native.structs import EVENT_DTYPE
    from sniffer.config import SnifferConfig
    from sniffer.pipeline import FlowPipeline

    rng = np.random.default_rng(1)
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["addr_lo"][:, 10:12] = 0xFF
    # Random sources in 0.0.0.0-9.255.255.255: below 10.10.0.10, so the key's "lo" end.
    ev["addr_lo"][:, 12] = rng.integers(0, 10, n, dtype=np.uint8)
    ev["addr_lo"][:, 13:] = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    ev["addr_hi"][:, 10:12] = 0xFF
    ev["addr_hi"][:, 12:] = (10, 10, 0, 10)
    ev["port_lo"] = rng.integers(1024, 65535, n)
    ev["port_hi"] = 80
    ev["protocol"], ev["ip_version"] = 6, 4
    t0 = 1_700_000_000 * 10**9
    ev["first_ts_ns"] = ev["last_ts_ns"] = ev["fwd_last_ts_ns"] = t0 + np.arange(n) * 20_000
    ev["fwd_packets"], ev["fwd_bytes"], ev["fwd_syn"] = 1, 40, 1
    ev["fwd_len_min"] = ev["fwd_len_max"] = 40
    ev["flags"] = C["MLD_F_INITIATOR_LO"] | C["MLD_F_L4"] | C["MLD_F_INIT_SYN"]
    ev["end_reason"] = C["MLD_END_IDLE_TIMEOUT"]
    best = float("inf")
    for _ in range(3):
        pipeline = FlowPipeline(SnifferConfig())
        start = time.perf_counter()
        for i in range(0, n, 4096):
            pipeline.process(ev[i : i + 4096], "outside", encode=False, pack=True)
        best = min(best, time.perf_counter() - start)
    return best / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="flood duration (20)")
    ap.add_argument("--scan-at", type=float, default=5.0, help="scan start, s into the flood")
    ap.add_argument("--quick", action="store_true", help="8 s flood, scan 3 s in (smoke)")
    ap.add_argument("--prefix", default=PREFIX, help=f"the lab's namespace prefix ({PREFIX})")
    ap.add_argument(
        "--no-overload", action="store_true", help="sniffer.capture.overload false, to compare"
    )
    ap.add_argument(
        "--sniffer-cost", action="store_true", help="only the sniffer's cost per flood record"
    )
    args = ap.parse_args()
    if args.sniffer_cost:
        per = sniffer_cost()
        print(f"sniffer_records_per_s={1 / per:.0f} us_per_record={per * 1e6:.1f}")
        return 0
    if args.quick:
        args.seconds, args.scan_at = 8.0, 3.0
    if os.geteuid() != 0:
        print("flood: needs root (the lab)", file=sys.stderr)
        return 1
    for tool in ("hping3", "nmap", "curl"):
        if shutil.which(tool) is None:
            print(f"flood: {tool} is missing: apt-get install {tool}", file=sys.stderr)
            return 1
    settings = {
        # SYN-only and one-way flows end by idle timeout: 5 s gets the verdicts in sooner.
        "sniffer": {"capture": {"idle_timeout_s": 5.0, "overload": not args.no_overload}},
        # The outside segment is the gateway's own: not allowlisted here (see above).
        "firewall": {"auto_allowlist": ["own_addresses", "gateways", "resolvers", "ntp"]},
    }
    with gateway_lab("flood", args.prefix, settings) as lab:
        return run(args, lab)


def run(args: argparse.Namespace, lab: GatewayLab) -> int:
    """The flood, the scan and the client against the stack up in the lab's gateway."""
    topo, gw_ns, run_dir, stack = lab.topo, lab.gw_ns, lab.run_dir, lab.stack
    flood: subprocess.Popen[str] | None = None
    scan: subprocess.Popen[str] | None = None
    client = Client(topo)
    try:
        before = counters(gw_ns, stack, "sniffer")
        nic_before = nic_drops(topo, "outside")
        watch = Watch(run_dir / "alerts.json", lab.state / "firewall" / "decisions.sqlite")
        watch.start()
        client.start()
        print(f"flood: stack up in {gw_ns}; flooding {SERVER}:80 for {args.seconds:.0f} s, "
              f"scan from {SCANNER} {args.scan_at:.0f} s in", flush=True)  # fmt: skip
        t0 = time.monotonic()
        flood = subprocess.Popen(
            ns_cmd(topo, "attacker", "hping3", "-q", "-S", "-p", "80", "--flood",
                   "--rand-source", SERVER),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait(lambda: time.monotonic() - t0 >= args.scan_at, args.scan_at + 5, "the scan's start")
        t_scan = time.time()
        # In the background: once blocked, its probes are dropped and nmap would wait on
        # retries; it is stopped with the flood.
        scan = subprocess.Popen(
            ns_cmd(topo, "workstation", "nmap", "-sT", "-n", "-T4", "-Pn", "-p", "1-1000",
                   "--max-retries", "1", SERVER),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait(lambda: time.monotonic() - t0 >= args.seconds, args.seconds + 30, "the flood")
        flood.send_signal(signal.SIGINT)  # hping3 prints its count on SIGINT
        out, _ = flood.communicate(timeout=30)
        flood_s = time.monotonic() - t0
        scan_done = scan.poll() is not None
        if not scan_done:
            scan.send_signal(signal.SIGINT)
        scan_out, _ = scan.communicate(timeout=30)
        client.stop_event.set()
        client.join(timeout=15)
        nic_dropped = nic_drops(topo, "outside") - nic_before
        m = re.search(r"(\d+) packets transmitted", out)
        sent = int(m.group(1)) if m else 0
        # The block may come after the flood: give it up to 30 s more.
        try:
            wait(lambda: watch.block_ts is not None, 30, "the scanner's block")
        except RuntimeError as exc:
            print(f"flood: {exc}", file=sys.stderr)
        watch.done.set()
        # The counters once the flood's summaries are drained and its flows are swept or
        # evicted: wait until the sniffer's counters stop moving between two heartbeats.
        last: dict[str, float] = {}
        still = 0
        deadline = time.monotonic() + 60
        while still < 2 and time.monotonic() < deadline:
            now = counters(gw_ns, stack, "sniffer")
            keys = ("source.packets", "source.flows_summarised", "source.flood_summarised_flows",
                    "source.evicted", "source.flows_exported", "source.swept")  # fmt: skip
            same = bool(now) and all(now.get(k) == last.get(k) for k in keys)
            still = still + 1 if same else 0
            last = now
            time.sleep(1.5)
        c = {k.removeprefix("source."): v - before.get(k, 0) for k, v in last.items()}
        # What `mld status` prints under the sniffer (its "overload" status record in etcd).
        for s in services(gw_ns, stack):
            report = s.get("reports", {}).get("overload") if s["component"] == "sniffer" else None
            if isinstance(report, dict):
                print(f"flood: mld status: overload: {report.get('summary')}")
        lost_uncounted = int(last.get("source.lost_uncounted", -1))
        dropped = {k: int(c.get(k, 0)) for k in DROP_KEYS}
        dropped["publish_records_dropped"] = int(c.get("publish.records_dropped", 0))
        dropped["nic_before_xdp"] = nic_dropped
        exported = int(c.get("flows_exported", 0) + c.get("interim_exported", 0)
                       + c.get("swept", 0))  # fmt: skip
        flood_pps = sent / flood_s if flood_s > 0 else 0.0
        detect_s = watch.alert_ts - t_scan if watch.alert_ts else float("nan")
        block_s = watch.block_ts - t_scan if watch.block_ts else float("nan")
        ports = len(re.findall(r"^\d+/tcp\s+open", scan_out, re.M))
        print(f"flood: hping3 sent {sent} packets in {flood_s:.1f} s; the gateway's XDP saw "
              f"{int(c.get('packets', 0))} packets, created {int(c.get('flows_created', 0))} "
              f"flows, summarised {int(c.get('flows_summarised', 0))} new flows into "
              f"{int(c.get('flood_records', 0))} flood records (overload began "
              f"{int(c.get('overload_by_rate', 0) + c.get('overload_by_ringbuf', 0) + c.get('overload_by_table', 0))}x), "  # noqa: E501
              f"admitted {int(c.get('overload_admitted', 0))} from repeating sources; the "
              f"outside NIC dropped {nic_dropped} before XDP (receive ring full)")  # fmt: skip
        what = f"finished, {ports} open ports" if scan_done else "stopped with the flood"
        print(f"flood: nmap {what}; benign client "
              f"{client.ok} fetches ok, {client.failed} failed; settings: block_unverified "
              "false (default), connect scan")  # fmt: skip
        drop_s = ",".join(f"{k}:{v}" for k, v in dropped.items())
        print(f"flood: dropped, per reason: {drop_s}")
        print(f"flood_pps={flood_pps:.0f} scan_block_s={block_s:.2f} "
              f"lost_uncounted={lost_uncounted} scan_detect_s={detect_s:.2f} "
              f"xdp_packets={int(c.get('packets', 0))} exported={exported} "
              f"summarised={int(c.get('flows_summarised', 0))} "
              f"flood_records={int(c.get('flood_records', 0))} "
              f"dropped_counted={sum(dropped.values())} client_ok={client.ok} "
              f"client_failed={client.failed}")  # fmt: skip
        return 0 if watch.block_ts is not None and lost_uncounted == 0 else 2
    finally:
        client.stop_event.set()
        if scan is not None and scan.poll() is None:
            scan.kill()
            scan.wait(timeout=10)
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
