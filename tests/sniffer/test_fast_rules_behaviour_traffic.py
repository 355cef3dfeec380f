"""fingerprint and reflection on real attack traffic made in namespaces, captured with
tcpdump and run through the sniffer's pipeline as ``mld sniffer flows`` does.

The attacks: nmap's NULL, FIN, Xmas and ACK scans of three ports and its ICMP timestamp
host discovery (a few ports: port_scan needs 16 failed ports and stays silent), and a
SYN-ACK reflection flood (hping3 sends the victim SYN-ACKs from eight spoofed
"reflectors", 7 each, as servers retransmit SYN-ACKs to a SYN the victim never sent).
Before the two rules existed no fast rule alerted on either (the shared captures of the
same attacks: 0/35 nmap flows, 32/606 SYN-ACK reflection flows by the forests only);
each test also checks that the benign traffic beside the attack (a client's HTTP
connections to the same server, the victim's own server answering) stays quiet.
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

BENIGN = "192.0.2.3"  # a second, benign client in the scanner's namespace
REFLECTORS = [f"198.51.100.{i}" for i in range(1, 9)]

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        if c.recv(100):
            c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    except OSError:
        pass
    c.close()
"""

CLIENT = """
import socket, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    c = socket.create_connection((dst, port), timeout=5, source_address=(src, 0))
    c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    while c.recv(4096):
        pass
    c.close()
print("done", flush=True)
"""


def _sentinel(pair: NetnsPair, ns: str, dst: str) -> None:
    code = (
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        f".sendto(b'end', ('{dst}', 9))"
    )
    pair.run(ns, sys.executable, "-c", code)


def _read(pcap: Path, expr: str) -> str:
    done = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap), expr], capture_output=True, text=True, check=False
    )
    return done.stdout


def _alerts(pcap: Path) -> tuple[dict[bytes, Counter[str]], dict[bytes, int]]:
    """Per initiator address: records alerted (fast score >= 0.5) by rule, and records;
    the sentinel datagram left out (toward the flooded victim, unanswered, it is scored
    with the flood)."""
    cfg = SnifferConfig()
    fired: dict[bytes, Counter[str]] = {}
    flows: Counter[bytes] = Counter()

    def sink(done):  # type: ignore[no-untyped-def]
        f = done.flows
        rows = zip(
            f.src_addr, f["protocol"].tolist(), f["dst_port"].tolist(), done.scores.rule,
            done.scores.score.tolist(), strict=True,
        )  # fmt: skip
        for src, proto, port, rule, score in rows:
            if (proto, port) == (17, 9):
                continue
            flows[src] += 1
            if score >= 0.5:
                fired.setdefault(src, Counter())[rule] += 1

    SnifferService(PcapSource([pcap], cfg.capture), FlowPipeline(cfg), None, (sink,)).run()
    return fired, dict(flows)


def _capture(pair: NetnsPair, ns: str, dev: str, pcap: Path) -> subprocess.Popen[str]:
    dump = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-U", "--immediate-mode", "-n", "-i", dev,
         "-w", str(pcap), "tcp or icmp or udp port 9"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert dump.stderr is not None
    line = dump.stderr.readline()
    assert "listening on" in line, line
    return dump


def _server(pair: NetnsPair, port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


def _stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.netns
def test_real_nmap_fingerprinting_of_three_ports(netns_pair: NetnsPair, tmp_path: Path) -> None:
    """Attack: nmap -sN, -sF, -sX and -sA of ports 22, 80 (open) and 443 of one host, then
    nmap -sn -PP (ICMP timestamp discovery) of it, from 192.0.2.1; beside it a benign
    client (192.0.2.3) fetches the open port's page 20 times."""
    require_root_and("tcpdump", "nmap")
    pair = netns_pair
    pair.run(pair.ns_a, "ip", "addr", "add", f"{BENIGN}/24", "dev", pair.dev_a)
    pcap = tmp_path / "fingerprint.pcap"
    server = _server(pair, 80)
    dump = _capture(pair, pair.ns_a, pair.dev_a, pcap)
    try:
        done = pair.run(pair.ns_a, sys.executable, "-c", CLIENT, BENIGN, pair.addr_b, "80", "20")
        assert done.stdout.strip() == "done"
        for scan in ("-sN", "-sF", "-sX", "-sA"):
            pair.run(pair.ns_a, "nmap", "-n", "-Pn", scan, "-p", "22,80,443", "-T4",
                     "--max-retries", "1", pair.addr_b)  # fmt: skip
        # --send-ip: on a local link nmap would otherwise discover by ARP.
        pair.run(pair.ns_a, "nmap", "-n", "-sn", "-PP", "--send-ip", pair.addr_b)
        _sentinel(pair, pair.ns_a, pair.addr_b)
        wait_for(lambda: ".9:" in _read(pcap, "udp port 9"), 30, "the sentinel in the capture")
    finally:
        _stop(dump, server)
    assert _read(pcap, f"icmp[0] == 13 and src host {pair.addr_a}"), "no timestamp request"
    fired, flows = _alerts(pcap)
    scanner = ipaddress.ip_address(pair.addr_a).packed
    benign = ipaddress.ip_address(BENIGN).packed
    # 3 ports x 4 scans + the timestamp request (nmap may retry a silent port).
    assert flows[scanner] >= 13, flows
    # Every probe but the first (below the low threshold) alerts, by this rule only.
    alerted = fired.get(scanner, Counter())
    assert alerted["fingerprint"] >= flows[scanner] - 1, (fired, flows)
    assert set(alerted) == {"fingerprint"}, fired
    assert flows[benign] == 20 and benign not in fired, (fired, flows)


@pytest.mark.netns
def test_real_synack_reflection_flood(netns_pair: NetnsPair, tmp_path: Path) -> None:
    """Attack: the victim (192.0.2.2, an FTP-port server) receives SYN-ACKs from port 21 of
    eight reflectors it never sent a SYN to, 7 each (hping3 -SA with spoofed sources, as
    reflectors retransmit to a spoofed SYN); beside it a benign client connects to the
    victim's server 10 times (the server's own SYN-ACKs answer real SYNs)."""
    require_root_and("tcpdump", "hping3")
    pair = netns_pair
    pcap = tmp_path / "reflection.pcap"
    server = _server(pair, 21)
    dump = _capture(pair, pair.ns_b, pair.dev_b, pcap)
    try:
        done = pair.run(
            pair.ns_a, sys.executable, "-c", CLIENT, pair.addr_a, pair.addr_b, "21", "10"
        )
        assert done.stdout.strip() == "done"
        for reflector in REFLECTORS:
            # check=False: hping3 exits 1 when nothing answers.
            pair.run(pair.ns_a, "hping3", "-q", "-c", "7", "-i", "u20000", "-S", "-A",
                     "-s", "21", "-k", "-p", "21", "-a", reflector, pair.addr_b,
                     check=False)  # fmt: skip
        _sentinel(pair, pair.ns_a, pair.addr_b)
        wait_for(lambda: ".9:" in _read(pcap, "udp port 9"), 30, "the sentinel in the capture")
    finally:
        _stop(dump, server)
    synacks = _read(pcap, "tcp[13] & 18 == 18 and src port 21 and src net 198.51.100.0/24")
    assert len(synacks.splitlines()) == 7 * len(REFLECTORS), synacks
    fired, flows = _alerts(pcap)
    reflected = [ipaddress.ip_address(r).packed for r in REFLECTORS]
    alerted = sum(fired.get(r, Counter())["reflection"] for r in reflected)
    # 7, 14, 21, ... unsolicited packets against ramp(10, 40): from the fourth flow on.
    assert alerted >= len(REFLECTORS) - 3, (fired, flows)
    client = ipaddress.ip_address(pair.addr_a).packed
    assert flows[client] == 10 and client not in fired, (fired, flows)
