"""The scan rules on real traffic made in namespaces: a real nmap SYN scan, and a benign
peer-to-peer-like client that talks to 200 hosts (a third of them gone), captured with
tcpdump and run through the sniffer's pipeline as ``mld sniffer flows`` does.

Issue 18: counted by distinct destinations alone, host_sweep marked such a client (a
Gnutella node: 721 of its 1,311 flows) as a scanner; counted on failures it does not,
and the scan still fires.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sniffer.config import SnifferConfig
from sniffer.pipeline import FlowPipeline
from sniffer.service import SnifferService
from sniffer.sources import PcapSource
from tests.support import NetnsPair, require_root_and, wait_for

PEERS = 200
PORT = 6346  # Gnutella's

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT)); s.listen(256)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        if c.recv(100):
            c.sendall(b"GNUTELLA/0.6 200 OK\\r\\nX-Try: 10.0.0.1:6346\\r\\n\\r\\n" * 4)
    except OSError:
        pass
    c.close()
""".replace("PORT", str(PORT))

CLIENT = """
import socket, sys
ok = failed = 0
for addr in sys.argv[1:]:
    try:
        c = socket.create_connection((addr, PORT), timeout=5)
        c.sendall(b"GNUTELLA CONNECT/0.6\\r\\nUser-Agent: test\\r\\n\\r\\n")
        c.recv(4096)
        c.close()
        ok += 1
    except OSError:
        failed += 1
print(ok, failed, flush=True)
""".replace("PORT", str(PORT))


def _addresses(base: str) -> list[str]:
    net = ipaddress.ip_address(base)
    return [str(net + 10 + i) for i in range(PEERS)]


def _read(pcap: Path, expr: str) -> str:
    done = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap), expr], capture_output=True, text=True, check=False
    )
    return done.stdout


def _rules(pcap: Path, src: bytes) -> tuple[Counter[str], int]:
    cfg = SnifferConfig()
    fired: Counter[str] = Counter()
    flows = 0

    def sink(done):  # type: ignore[no-untyped-def]
        nonlocal flows
        for s, rule, score in zip(
            done.flows.src_addr, done.scores.rule, done.scores.score.tolist(), strict=True
        ):
            if s == src:
                flows += 1
                if score >= 0.5:
                    fired[rule] += 1

    SnifferService(PcapSource([pcap], cfg.capture), FlowPipeline(cfg), None, (sink,)).run()
    return fired, flows


@pytest.mark.netns
def test_real_scan_fires_and_peer_fan_out_does_not(netns_pair: NetnsPair, tmp_path: Path) -> None:
    require_root_and("tcpdump", "nmap", "nft")
    pair = netns_pair
    peers = _addresses(pair.addr_b)
    for addr in peers:
        pair.run(pair.ns_b, "ip", "addr", "add", f"{addr}/32", "dev", pair.dev_b)
        pair.run(pair.ns_a, "ip", "route", "add", f"{addr}/32", "dev", pair.dev_a)
    # A third of the peers are gone: their port answers with a reset.
    gone = ", ".join(peers[::3])
    rules = (
        "table inet mldtest {\n chain input {\n  type filter hook input priority 0;\n"
        f"  ip daddr {{ {gone} }} tcp dport {PORT} reject with tcp reset\n }}\n}}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", pair.ns_b, "nft", "-f", "-"], input=rules, text=True, check=True
    )
    pcap = tmp_path / "fanout.pcap"
    server = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    dump = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns_a, "tcpdump", "-U", "--immediate-mode", "-n", "-i",
         pair.dev_a, "-w", str(pcap), "tcp or udp port 9"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert dump.stderr is not None
        line = dump.stderr.readline()
        assert "listening on" in line, line
        done = pair.run(pair.ns_a, sys.executable, "-c", CLIENT, *peers)
        ok, failed = map(int, done.stdout.split())
        assert failed == len(peers[::3]) and ok == PEERS - failed
        # The scan: a SYN scan of 300 ports of one host, from the same client address.
        pair.run(pair.ns_a, "nmap", "-n", "-Pn", "-sS", "-p", "1-300", "-T4", pair.addr_b)
        # A last datagram to the discard port; once it is in the file, so is the scan.
        sentinel = (
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
            f".sendto(b'end', ('{pair.addr_b}', 9))"
        )
        pair.run(pair.ns_a, sys.executable, "-c", sentinel)
        wait_for(lambda: ".9:" in _read(pcap, "udp port 9"), 30, "the sentinel in the capture")
    finally:
        dump.send_signal(signal.SIGTERM)
        dump.communicate(timeout=30)
        server.kill()
        server.communicate(timeout=30)
    fired, flows = _rules(pcap, ipaddress.ip_address(pair.addr_a).packed)
    assert flows >= PEERS + 300
    # nmap's 300 probes (closed ports reset, open ones half-open): port_scan alerts
    # (score >= 0.5) from the probe that brings the failed ports to the ramp's midpoint.
    rules = SnifferConfig().rules
    midpoint = (rules.port_scan_low + rules.port_scan_high) / 2
    assert fired["port_scan"] >= 300 - midpoint, fired
    # The fan-out to 200 hosts, a third refused: neither a sweep nor a scan.
    assert fired["host_sweep"] == 0, fired
    assert sum(fired.values()) <= 300, fired
