"""Live equals offline: the XDP program and the pcap engine give the same flows.

Three namespaces: a client ``a``, a router ``r`` and a server ``b``. The flow program is
attached to both of the router's interfaces (one program, one flow map), as on a gateway, so
each flow's two directions meet in one record. tcpdump on the router's client-side
interface records the same packets: A→B on its way in, B→A on its way out. After a bounded
mix of TCP (clean close and refused), UDP (with DNS-shaped queries, and one datagram larger
than the MTU that the kernels fragment both ways) and ICMP traffic over IPv4 and IPv6, the
records the monitor exported are compared with what native.FlowEngine makes of the capture:
same flows, same counters; times within a tolerance, because the kernel stamps a packet at
XDP and tcpdump a few microseconds later.

Interim records (issue 18): both sides run with interim_s = 1 s, and a UDP flow of twelve
query/answer pairs on a fixed 0.3 s schedule (3.3 s, so the packets lie 0.1 s or more
away from where an interim record falls due: the two clocks differ by microseconds) gives
two interim records per family before its final one; they too must be the same records,
in the same order, live and offline.

TSO/GSO are off on the senders and GRO off on the router, so XDP and tcpdump see the same
packets (no super-frames on either side).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import REPO, NetnsRouter, require_root_and, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]

IDLE_S = 30.0
ACTIVE_S = 300.0
INTERIM_S = 1.0
# Times: XDP stamps a packet before tcpdump does, on another clock (monotonic + offset).
TS_TOLERANCE_NS = 50_000_000

# Runs inside the router namespace: attach, export until SIGTERM, flush, write raw events.
MONITOR_DRIVER = (
    """
import sys, time
from pathlib import Path
from xdp import FlowMonitor
from xdp.monitor import raise_on_sigterm

out, ready, ifaces = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
raise_on_sigterm()
chunks = []
mon = FlowMonitor(ifaces, idle_timeout_s=IDLE_S, active_timeout_s=ACTIVE_S,
                  interim_s=INTERIM_S, max_flows=65536, ringbuf_pages=256, mode="auto",
                  sweep_interval_s=0.5)
try:
    mon.attach()
    ready.write_text(repr(mon.modes))
    while True:
        chunks.append(mon.poll(100))
except (SystemExit, KeyboardInterrupt):
    pass
finally:
    try:
        chunks.append(mon.poll(0))
        chunks.append(mon.flush())
    finally:
        mon.close()
        out.write_bytes(b"".join(chunks))
""".replace("IDLE_S", repr(IDLE_S))
    .replace("ACTIVE_S", repr(ACTIVE_S))
    .replace("INTERIM_S", repr(INTERIM_S))
)

# Runs inside the server namespace: TCP sink that answers, UDP echo; both families.
SERVER = """
import socket, threading, sys
def tcp(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080)); s.listen(8)
    while True:
        c, _ = s.accept()
        total = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            total += len(d)
        c.sendall(str(total).encode() * 100)
        c.close()
def udp(fam, addr):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        d, peer = s.recvfrom(4096)
        s.sendto(d + b"\\x00" * 40, peer)
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    threading.Thread(target=tcp, args=(fam, addr), daemon=True).start()
    threading.Thread(target=udp, args=(fam, addr), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Runs inside the client namespace: bounded traffic, paced so nothing is coalesced.
CLIENT = """
import socket, struct, sys, time
b4, b6 = sys.argv[1], sys.argv[2]
def dns_query(qid, name):
    hdr = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return hdr + labels + b"\\x00" + struct.pack(">HH", 1, 1)
for fam, addr in ((socket.AF_INET, b4), (socket.AF_INET6, b6)):
    c = socket.create_connection((addr, 8080), timeout=5)
    for i in range(12):
        c.sendall(bytes([i]) * (200 + 97 * i))
        time.sleep(0.01)
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(2)
    for i in range(6):
        u.sendto(dns_query(i, f"q{i}x{'a' * (3 * i)}.example.org"), (addr, 53))
        u.recvfrom(4096)
        time.sleep(0.01)
    # Larger than the MTU: the kernels fragment it both ways (first fragments join this
    # flow, later ones the ports-0 flow of the same addresses).
    u.sendto(bytes(3000), (addr, 53))
    u.recvfrom(4096)
    u.close()
    # A longer flow (3.3 s) on a fixed schedule: interim records at 1.2 s and 2.4 s.
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(2)
    t0 = time.monotonic()
    for i in range(12):
        time.sleep(max(0.0, t0 + 0.3 * i - time.monotonic()))
        u.sendto(dns_query(100 + i, f"long{i}.example.org"), (addr, 53))
        u.recvfrom(4096)
    u.close()
    r = socket.socket(fam, socket.SOCK_STREAM)
    r.settimeout(2)
    try:
        r.connect((addr, 9))
    except OSError:
        pass
    r.close()
print("done", flush=True)
"""


def _netns_popen(ns: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], text=True, **kw)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _addr(raw: np.ndarray) -> bytes:
    b = bytes(raw)
    return b[12:] if b[:12] == b"\x00" * 10 + b"\xff\xff" else b


def _between_a_and_b(ev: np.ndarray, t: NetnsRouter) -> bool:
    import ipaddress

    a = {ipaddress.ip_address(x).packed for x in (t.addr_a, t.addr6_a)}
    b = {ipaddress.ip_address(x).packed for x in (t.addr_b, t.addr6_b)}
    ends = {_addr(ev["addr_lo"]), _addr(ev["addr_hi"])}
    return len(ends & a) == 1 and len(ends & b) == 1


# Fields that must be bit-identical; the rest are times, compared with a tolerance.
TIME_FIELDS = {"first_ts_ns", "last_ts_ns", "end_reason", "interim_ts_ns"}


def _exact_fields(names: tuple[str, ...]) -> list[str]:
    return [
        n for n in names if n not in TIME_FIELDS and "iat" not in n and not n.endswith("last_ts_ns")
    ]


def _key(ev: np.ndarray) -> tuple[bytes, ...]:
    return (
        bytes(ev["addr_lo"]),
        bytes(ev["addr_hi"]),
        int(ev["port_lo"]).to_bytes(2),
        int(ev["port_hi"]).to_bytes(2),
        bytes([int(ev["protocol"])]),
    )


def test_live_flows_equal_offline_flows(netns_router: NetnsRouter, tmp_path: Path) -> None:
    require_root_and("tcpdump", "ping")
    t = netns_router
    native = pytest.importorskip("native")
    live_out, ready, pcap = tmp_path / "live.bin", tmp_path / "ready", tmp_path / "r.pcap"
    driver = tmp_path / "driver.py"
    driver.write_text(MONITOR_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    py = sys.executable
    procs: list[subprocess.Popen[str]] = []
    try:
        mon = _netns_popen(
            t.ns_r, py, str(driver), str(live_out), str(ready), t.r_a, t.r_b,
            env=env, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(mon)
        wait_for(lambda: ready.exists() or mon.poll() is not None, 60, "the monitor to attach")
        assert mon.poll() is None, mon.stderr.read() if mon.stderr else ""
        dump = _netns_popen(
            t.ns_r, "tcpdump", "-i", t.r_a, "-w", str(pcap), "-U", "-s", "0",
            "--time-stamp-precision", "nano", "-n", "--immediate-mode",
            stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(dump)
        wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, 20, "tcpdump to start")
        time.sleep(0.3)
        server = _netns_popen(
            t.ns_b, py, "-c", SERVER, t.addr_b, t.addr6_b, stdout=subprocess.PIPE, env=env
        )
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for dst in (t.addr_b, t.addr6_b):
            t.run(t.ns_a, "ping", "-c", "4", "-i", "0.05", "-W", "2", dst)
        client = t.run(t.ns_a, py, "-c", CLIENT, t.addr_b, t.addr6_b)
        assert client.stdout.strip() == "done", client.stderr
        time.sleep(0.5)
        _stop(dump, signal.SIGINT)
        _stop(mon)
        assert mon.returncode == 0, mon.stderr.read() if mon.stderr else ""
    finally:
        for p in reversed(procs):
            _stop(p)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()

    live = np.frombuffer(live_out.read_bytes(), dtype=native.EVENT_DTYPE)
    engine = native.FlowEngine(
        idle_timeout_s=IDLE_S, active_timeout_s=ACTIVE_S, interim_s=INTERIM_S
    )
    batches = [*engine.feed_file(str(pcap)), engine.finish()]
    offline = np.concatenate(batches)

    live_ab = sorted((e for e in live if _between_a_and_b(e, t)), key=_key)
    off_ab = sorted((e for e in offline if _between_a_and_b(e, t)), key=_key)
    summary = {
        "live": len(live_ab),
        "offline": len(off_ab),
        "live_keys": [_key(e)[4].hex() for e in live_ab],
    }
    # TCP v4+v6 (clean close + refused), UDP v4+v6, ICMP echo v4+v6, the later
    # fragments of the large UDP datagrams (ports 0) v4+v6, the long UDP flows v4+v6 and
    # their two interim records each. On a loaded machine another flow may last past
    # interim_s too and get an interim record: both sides then have it (compared below).
    interim = native.CONSTANTS["MLD_F_INTERIM"]
    finals = [e for e in off_ab if not int(e["flags"]) & interim]
    assert len(finals) == 12, json.dumps(summary)
    n_interim = sum(1 for e in off_ab if int(e["flags"]) & interim)
    assert n_interim >= 4, json.dumps(summary)
    assert sum(1 for e in live_ab if int(e["flags"]) & interim) == n_interim
    # 3000 + 40 bytes over a 1500-byte MTU: 3 fragments each way; the first of each in the
    # UDP flow, the other two in the ports-0 flow; none tiny, none overlapping.
    frags = sorted((int(e["frag_count"]), int(e["port_lo"] or e["port_hi"])) for e in off_ab)
    assert [f for f, port in frags if f] == [2, 2, 4, 4], frags
    assert sum(int(e["tiny_frag_count"]) + int(e["overlap_frag_count"]) for e in off_ab) == 0
    assert [_key(e) for e in live_ab] == [_key(e) for e in off_ab], json.dumps(summary)

    names = native.EVENT_DTYPE.names
    for lv, of in zip(live_ab, off_ab, strict=True):
        for field in _exact_fields(names):
            assert np.array_equal(lv[field], of[field]), (field, lv[field], of[field])
        assert abs(int(lv["first_ts_ns"]) - int(of["first_ts_ns"])) < TS_TOLERANCE_NS
        assert abs(int(lv["last_ts_ns"]) - int(of["last_ts_ns"])) < TS_TOLERANCE_NS
        assert abs(int(lv["interim_ts_ns"]) - int(of["interim_ts_ns"])) < TS_TOLERANCE_NS
        for d in ("fwd", "bwd"):
            assert abs(int(lv[f"{d}_iat_sum_ns"]) - int(of[f"{d}_iat_sum_ns"])) < TS_TOLERANCE_NS
        # FIN and RST end the flow on a packet, so both sides agree; flows still open when
        # the run stopped end with CAPTURE_END on both sides too.
        assert int(lv["end_reason"]) == int(of["end_reason"]), _key(lv)
