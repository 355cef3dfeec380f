"""The XDP flow program on real veths: exported flows, end reasons, sweeps, detach, modes.

Each monitor runs in a test namespace (see conftest.py); traffic is bounded and stays
between addresses of namespaces the test creates. Records are decoded by the driver with
the ctypes type native.structs builds from the compiler's layout of struct mld_flow_event
(the monitor checks it against BCC's), never with a hand-written copy.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from native.structs import CONSTANTS
from tests.support import NetnsPair, NetnsRouter, sh, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

C = CONSTANTS
UDP_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 40000))
for i in range(5):
    s.sendto(b"x" * 100, (sys.argv[2], 9999))
    time.sleep(0.02)
"""
TCP_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while c.recv(65536):
    pass
c.sendall(b"ok")
c.close()
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=5)
c.sendall(b"y" * 1000)
c.shutdown(socket.SHUT_WR)
while c.recv(65536):
    pass
c.close()
r = socket.socket()
r.settimeout(2)
try:
    r.connect((sys.argv[1], 9))
except OSError:
    pass
r.close()
"""


def mapped(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    raw = ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed
    return raw.hex()


def flows_between(events: list[dict[str, Any]], a: str, b: str, proto: int) -> list[Any]:
    ends = {mapped(a), mapped(b)}
    return [
        e
        for e in events
        if {e["key"]["addr_lo"], e["key"]["addr_hi"]} == ends and e["key"]["protocol"] == proto
    ]


def ping(pair: NetnsPair | NetnsRouter, ns: str, dst: str, *opts: str) -> int:
    cmd = ["ip", "netns", "exec", ns, "ping", "-n", "-q", *opts, dst]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode


def xdp_attached(ns: str, dev: str) -> str:
    out = sh("ip", "-n", ns, "-d", "link", "show", "dev", dev).stdout
    return "\n".join(line for line in out.splitlines() if "xdp" in line)


def prog_ids(shown: str) -> list[str]:
    return re.findall(r"prog/xdp id (\d+)", shown)


def test_ping_and_udp_one_direction(netns_pair: NetnsPair, monitors: Any) -> None:
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b])
    assert set(mon.modes) == {p.dev_b}
    t0 = time.time_ns()
    assert ping(p, p.ns_a, p.addr_b, "-c", "4", "-i", "0.1") == 0
    p.run(p.ns_a, sys.executable, "-c", UDP_SEND, p.addr_a, p.addr_b)
    time.sleep(0.3)
    assert mon.stop() == 0, mon.err()
    assert mon.out.stat().st_size % mon.record_size == 0
    events = mon.events()

    (icmp,) = flows_between(events, p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])
    st = icmp["state"]
    # Only B's ingress is watched: the echo requests A -> B (84-byte IP packets).
    assert st["dir"][0]["packets"] == 4 and st["dir"][0]["bytes"] == 4 * 84
    assert st["dir"][1]["packets"] == 0
    assert st["flags"] & C["MLD_F_INITIATOR_LO"]  # 192.0.2.1 sorts first and started it
    assert st["icmp_type"] == 8
    assert st["end_reason"] == C["MLD_END_CAPTURE_END"] and icmp["phase"] == "flush"
    # Times are converted to the epoch.
    assert t0 - 5e9 < st["first_ts_ns"] <= st["last_ts_ns"] < time.time_ns() + 5e9
    assert st["dir"][0]["last_ts_ns"] == st["last_ts_ns"]
    assert 0.3e9 < st["dir"][0]["iat_sum_ns"] < 3e9

    (udp,) = flows_between(events, p.addr_a, p.addr_b, C["MLD_PROTO_UDP"])
    assert {udp["key"]["port_lo"], udp["key"]["port_hi"]} == {40000, 9999}
    d0 = udp["state"]["dir"][0]
    assert (d0["packets"], d0["bytes"], d0["payload_bytes"]) == (5, 5 * 128, 500)
    assert udp["state"]["flags"] & C["MLD_F_L4"]
    stats = mon.stats()
    assert stats["flows_created"] >= 2 and stats["live_flows"] == 0
    assert stats["parse_errors"] == 0 and stats["evicted_estimate"] == 0


def test_idle_sweep_exports_and_active_timeout_splits(netns_pair: NetnsPair, monitors: Any) -> None:
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b], idle=1.0, active=1.0, sweep=0.2)
    assert ping(p, p.ns_a, p.addr_b, "-c", "12", "-i", "0.2") == 0

    def idle_export() -> bool:
        icmp = flows_between(mon.events(), p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])
        return any(e["state"]["end_reason"] == C["MLD_END_IDLE_TIMEOUT"] for e in icmp)

    wait_for(idle_export, 10, "the sweeper to export the idle ICMP flow")
    assert mon.stop() == 0, mon.err()
    icmp = flows_between(mon.events(), p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])
    reasons = [e["state"]["end_reason"] for e in icmp]
    # 12 pings over 2.2 s with a 1 s active timeout: split at least twice, then swept idle.
    assert reasons.count(C["MLD_END_ACTIVE_TIMEOUT"]) >= 2, reasons
    assert reasons[-1] == C["MLD_END_IDLE_TIMEOUT"], reasons
    assert sum(e["state"]["dir"][0]["packets"] for e in icmp) == 12
    for e in icmp:
        st = e["state"]
        assert st["last_ts_ns"] - st["first_ts_ns"] < 1.0e9
    stats = mon.stats()
    assert stats["swept"] >= 1 and stats["flows_exported"] >= 2


def test_interim_records_while_the_flow_goes_on(netns_pair: NetnsPair, monitors: Any) -> None:
    """A flow that never goes idle (40 pings, 0.1 s apart) with interim_s=1: interim
    records (MLD_F_INTERIM, cumulative counters) come out of the program while the pings
    still run, and the final record still comes at the end, with every packet."""
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b], idle=30.0, interim=1.0)
    cmd = ["ip", "netns", "exec", p.ns_a, "ping", "-n", "-q", "-c", "40", "-i", "0.1", p.addr_b]
    pinger = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def interim() -> list[Any]:
            icmp = flows_between(mon.events(), p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])
            return [e for e in icmp if e["state"]["flags"] & C["MLD_F_INTERIM"]]

        wait_for(lambda: interim(), 20, "an interim record of the running ping flow")
        assert pinger.wait(timeout=30) == 0
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait(timeout=5)
    assert mon.stop() == 0, mon.err()
    icmp = flows_between(mon.events(), p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])
    *interims, final = icmp
    assert 2 <= len(interims) <= 4, [e["state"]["dir"][0]["packets"] for e in icmp]
    first_ts = final["state"]["first_ts_ns"]
    packets = [e["state"]["dir"][0]["packets"] for e in interims]
    assert packets == sorted(packets) and packets[-1] < 40, packets
    for e in interims:
        st = e["state"]
        assert st["flags"] & C["MLD_F_INTERIM"] and st["end_reason"] == 0
        assert st["first_ts_ns"] == first_ts, "an interim record is the same flow"
        assert st["interim_ts_ns"] == st["last_ts_ns"], "cut on the packet that made it due"
    cuts = [first_ts, *(e["state"]["interim_ts_ns"] for e in interims)]
    assert all(b - a >= 1e9 for a, b in itertools.pairwise(cuts)), cuts
    st = final["state"]
    assert not st["flags"] & C["MLD_F_INTERIM"]
    assert st["dir"][0]["packets"] == 40 and st["end_reason"] == C["MLD_END_CAPTURE_END"]
    stats = mon.stats()
    assert stats["interim_exported"] == len(interims)
    assert stats["evicted_estimate"] == 0, "interim records are not counted as ended flows"


def test_router_merges_directions_fin_and_rst(netns_router: NetnsRouter, monitors: Any) -> None:
    t = netns_router
    mon = monitors(t.ns_r, [t.r_a, t.r_b])
    assert set(mon.modes) == {t.r_a, t.r_b}
    server = subprocess.Popen(
        ["ip", "netns", "exec", t.ns_b, sys.executable, "-c", TCP_SERVER, t.addr_b],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert ping(t, t.ns_a, t.addr_b, "-c", "3", "-i", "0.1") == 0
        t.run(t.ns_a, sys.executable, "-c", TCP_CLIENT, t.addr_b)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    time.sleep(0.3)
    assert mon.stop() == 0, mon.err()
    events = mon.events()

    (icmp,) = flows_between(events, t.addr_a, t.addr_b, C["MLD_PROTO_ICMP"])
    # Requests enter r on r_a, replies on r_b: one program, one map, one flow.
    assert [d["packets"] for d in icmp["state"]["dir"]] == [3, 3]

    tcp = flows_between(events, t.addr_a, t.addr_b, C["MLD_PROTO_TCP"])
    (fin,) = [e for e in tcp if 8080 in (e["key"]["port_lo"], e["key"]["port_hi"])]
    st = fin["state"]
    assert st["end_reason"] == C["MLD_END_FIN"] and fin["phase"] == "poll"
    fwd, bwd = st["dir"]
    assert (fwd["syn"], bwd["syn"], fwd["fin"], bwd["fin"]) == (1, 1, 1, 1)
    assert fwd["payload_bytes"] == 1000 and bwd["payload_bytes"] == 2
    both = C["MLD_F_FIN_FWD"] | C["MLD_F_FIN_BWD"]
    assert st["flags"] & both == both

    (rst,) = [e for e in tcp if 9 in (e["key"]["port_lo"], e["key"]["port_hi"])]
    assert rst["state"]["end_reason"] == C["MLD_END_RST"] and rst["phase"] == "poll"
    assert rst["state"]["flags"] & C["MLD_F_RST"]
    assert rst["state"]["dir"][0]["syn"] == 1 and rst["state"]["dir"][1]["rst"] == 1


def test_stale_attachment_replaced_and_sigterm_detaches(
    netns_pair: NetnsPair, monitors: Any
) -> None:
    p = netns_pair
    crashed = monitors(p.ns_b, [p.dev_b], mode="generic")
    crashed.stop(signal.SIGKILL)
    stale = xdp_attached(p.ns_b, p.dev_b)
    assert "xdpgeneric" in stale, "SIGKILL should leave the program attached"

    mon = monitors(p.ns_b, [p.dev_b])
    assert prog_ids(xdp_attached(p.ns_b, p.dev_b)) not in ([], prog_ids(stale))
    assert ping(p, p.ns_a, p.addr_b, "-c", "2", "-i", "0.1") == 0
    assert mon.fresh_stats()["packets"] >= 2
    assert mon.stop(signal.SIGTERM) == 0, mon.err()
    assert xdp_attached(p.ns_b, p.dev_b) == ""
    assert flows_between(mon.events(), p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])


@pytest.mark.parametrize("mode", ["generic", "native"])
def test_modes(netns_pair: NetnsPair, monitors: Any, mode: str) -> None:
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b], mode=mode)
    assert mon.modes == {p.dev_b: mode}
    shown = xdp_attached(p.ns_b, p.dev_b)
    assert ("xdpgeneric" in shown) == (mode == "generic"), shown
    assert ping(p, p.ns_a, p.addr_b, "-c", "2", "-i", "0.1") == 0
    assert mon.stop() == 0, mon.err()
    (icmp,) = flows_between(mon.events(), p.addr_a, p.addr_b, C["MLD_PROTO_ICMP"])
    assert icmp["state"]["dir"][0]["packets"] == 2
    assert xdp_attached(p.ns_b, p.dev_b) == ""


UDP_PORTS = """
import socket, sys
for port in range(41000, 41000 + int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    s.sendto(b"z", (sys.argv[2], 9999))
    s.close()
"""


def test_full_table_evicts_silently_and_stats_estimate_it(
    netns_pair: NetnsPair, monitors: Any
) -> None:
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b], max_flows=16, no_flush=True)
    p.run(p.ns_a, sys.executable, "-c", UDP_PORTS, p.addr_a, p.addr_b, "64")
    stats = mon.fresh_stats()
    assert stats["flows_created"] >= 64
    assert stats["live_flows"] <= 16
    assert stats["evicted_estimate"] >= 64 - 16 - stats["flows_exported"] - stats["swept"]
    assert mon.stop() == 0, mon.err()
