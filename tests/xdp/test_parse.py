"""Attacks on the XDP parser: blocked sources behind parse errors, tiny-fragment scans.

Each test performs the attack from a namespace the test created, with frames built byte
for byte (tests/xdp/frames.py) and sent through an AF_PACKET socket, against the real XDP
program attached to the receiving veth.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import native
from tests.support import NetnsPair, require_root_and, wait_for
from tests.xdp import frames
from xdp import Blocklist

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

A6, B6 = "2001:db8:19::1", "2001:db8:19::2"


def add_v6(p: NetnsPair) -> None:
    for ns, dev, addr in ((p.ns_a, p.dev_a, A6), (p.ns_b, p.dev_b, B6)):
        p.run(ns, "ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")


def test_blocked_source_behind_seven_ipv6_extension_headers_is_dropped(
    netns_pair: NetnsPair, monitors: Any, tmp_path: Path
) -> None:
    """Attack: a blocked IPv6 source wraps its packets in seven destination-options headers,
    one more than the parser follows. The program used to give up on the parse error and
    pass the packet before it looked the source up, so the block did not apply to it (and
    no flow recorded it). Now the source is looked up as soon as the IPv6 header is read:
    every such packet is dropped by the block and counted on the block's entry."""
    p = netns_pair
    add_v6(p)
    mon = monitors(p.ns_b, [p.dev_b])
    n = 20
    mac_a, mac_b = frames.mac(p.ns_a, p.dev_a), frames.mac(p.ns_b, p.dev_b)
    packets = [
        frames.ether(mac_b, mac_a, 0x86DD, frames.icmpv6_echo_with_dest_opts(A6, B6, 7, 77, i))
        for i in range(n)
    ]
    with Blocklist(monitors.pin_dir) as bl:
        assert bl.add(f"{A6}/128") is True
        assert frames.send(p, packets, str(tmp_path / "f.hex")) == n
        wait_for(lambda: bl.entries()[0].drops >= n, 15, f"the block to drop all {n} packets")
        assert bl.entries()[0].drops == n
    stats = mon.fresh_stats()
    assert stats["blocked_packets"] == n


def test_tiny_fragment_scan_makes_one_flow_per_port(
    netns_pair: NetnsPair, monitors: Any, tmp_path: Path
) -> None:
    """Attack: a SYN scan of 24 ports sent as tiny IPv4 fragments (the first fragment holds
    8 bytes of the TCP header, the second the rest at offset 8, as ``nmap -f`` does), plus
    one datagram whose later fragments overlap. The parser used to drop the first fragments
    as parse errors and key the second ones on ports 0, so the whole scan became one flow
    with ports 0 that no port-scan rule could see. Now every first fragment keys its flow
    by the ports it carries, and the records count fragments, tiny ones and overlaps; the
    offline engine makes the same records of a capture of the same frames."""
    require_root_and("tcpdump")
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b])
    mac_a, mac_b = frames.mac(p.ns_a, p.dev_a), frames.mac(p.ns_b, p.dev_b)
    ports = list(range(1000, 1024))
    out = []
    for i, port in enumerate(ports):
        syn = frames.tcp_syn(40000, port)
        for off8, data, more in ((0, syn[:8], True), (1, syn[8:], False)):
            ip = frames.ipv4_fragment(p.addr_a, p.addr_b, 6, 5000 + i, off8, more, data)
            out.append(frames.ether(mac_b, mac_a, 0x0800, ip))
    # Two later fragments of datagram 9999: bytes [24, 40) then [32, 48), overlapping.
    for off8, more in ((3, True), (4, False)):
        ip = frames.ipv4_fragment(p.addr_a, p.addr_b, 6, 9999, off8, more, b"o" * 16)
        out.append(frames.ether(mac_b, mac_a, 0x0800, ip))

    # What XDP passed on b (all of it: fragments are not parse errors), as tcpdump saw it.
    pcap = tmp_path / "b.pcap"
    dump = subprocess.Popen(
        ["ip", "netns", "exec", p.ns_b, "tcpdump", "-i", p.dev_b, "-Q", "in", "-w", str(pcap),
         "-U", "-s", "0", "--time-stamp-precision", "nano", "-n", "-Z", "root", "--immediate-mode"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert dump.stderr is not None and "listening on" in dump.stderr.readline()
        assert frames.send(p, out, str(tmp_path / "f.hex")) == len(out)
        wait_for(lambda: mon.fresh_stats()["packets"] >= len(out), 15, "the monitor to see them")
        size = 24 + sum(16 + len(f) for f in out)  # pcap header, record headers, frames
        wait_for(lambda: pcap.stat().st_size >= size, 15, "tcpdump to write every frame")
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=20)
        if dump.stderr is not None:
            dump.stderr.close()
    stats = mon.fresh_stats()
    assert stats["fragments"] == len(out), stats
    assert stats["tiny_fragments"] == 2 * len(ports), stats
    assert stats["parse_errors"] == 0
    assert mon.stop() == 0, mon.err()

    live = np.frombuffer(mon.out.read_bytes(), dtype=native.EVENT_DTYPE)
    engine = native.FlowEngine(idle_timeout_s=30.0, active_timeout_s=300.0)
    offline = np.concatenate([*engine.feed_file(str(pcap)), engine.finish()])
    assert engine.stats["fragments"] == len(out), engine.stats
    assert engine.stats["parse_errors"] == 0, engine.stats

    def scan(events: np.ndarray) -> list[dict[str, int]]:
        rows = []
        for e in events[events["protocol"] == 6]:
            lo_is_b = bytes(e["addr_lo"])[12:] == bytes(map(int, p.addr_b.split(".")))
            rows.append({
                "dport": int(e["port_lo"] if lo_is_b else e["port_hi"]),
                "packets": int(e["fwd_packets"] + e["bwd_packets"]),
                **{f: int(e[f]) for f in ("frag_count", "tiny_frag_count", "overlap_frag_count")},
                "syn": int(e["fwd_syn"]),
            })  # fmt: skip
        return sorted(rows, key=lambda r: r["dport"])

    got = scan(live)
    # One flow per scanned port: its tiny first fragment (no TCP flags: they were not in it).
    per_port = {"packets": 1, "frag_count": 1, "tiny_frag_count": 1, "overlap_frag_count": 0}
    assert [r["dport"] for r in got] == [0, *ports], got
    assert all({k: r[k] for k in per_port} == per_port for r in got[1:]), got
    # The later fragments: 24 at offset 8 (tiny: inside the TCP header), the overlapping pair.
    rest = {"packets": 26, "frag_count": 26, "tiny_frag_count": 24, "overlap_frag_count": 1}
    assert {k: got[0][k] for k in rest} == rest, got[0]
    assert scan(offline) == got


def _unparseable(p: NetnsPair, n: int) -> tuple[list[bytes], dict[str, int]]:
    """n frames of each kind the parser cannot follow, from an address nobody blocked, and
    the counter each must land in."""
    mac_a, mac_b = frames.mac(p.ns_a, p.dev_a), frames.mac(p.ns_b, p.dev_b)
    syn = frames.tcp_syn(40000, 80)
    v4 = frames.ipv4(p.addr_a, p.addr_b, 6, syn)
    kinds = {
        # seven destination-options headers, one more than the parser follows
        "parse_ext_limit": frames.ether(
            mac_b, mac_a, 0x86DD, frames.icmpv6_echo_with_dest_opts(A6, B6, 7, 78, 1)
        ),
        # the frame ends inside the IPv4 header
        "parse_truncated": frames.ether(mac_b, mac_a, 0x0800, v4[:16]),
        # IHL 3: a header shorter than the fixed IPv4 header
        "parse_malformed": frames.ether(mac_b, mac_a, 0x0800, bytes([0x43]) + v4[1:]),
        # the IP total length (28) cannot hold the 20-byte TCP header that follows
        "parse_bad_length": frames.ether(
            mac_b, mac_a, 0x0800, frames.ipv4(p.addr_a, p.addr_b, 6, syn, total=28)
        ),
    }
    out = [f for f in kinds.values() for _ in range(n)]
    return out, {k: n for k in kinds}


def test_unparseable_packets_are_dropped_and_counted_by_reason(
    netns_pair: NetnsPair, monitors: Any, tmp_path: Path
) -> None:
    """Attack: packets built so the parser gives up (seven IPv6 extension headers, a cut
    IPv4 header, IHL 3, an IP length too short for the TCP header). They used to be passed
    to the host uncounted by reason and unseen by detection. Now each is dropped by default
    and counted under its reason; the host's IPv6 stack never receives the echo requests."""
    p = netns_pair
    add_v6(p)
    mon = monitors(p.ns_b, [p.dev_b])
    n = 5
    echos = frames.snmp6(p, p.ns_b, "Icmp6InEchos")
    packets, want = _unparseable(p, n)
    assert frames.send(p, packets, str(tmp_path / "f.hex")) == len(packets)
    wait_for(lambda: mon.fresh_stats()["parse_dropped"] >= len(packets), 15, "the drops")
    stats = mon.fresh_stats()
    assert {k: stats[k] for k in want} == want
    assert stats["parse_errors"] == stats["parse_dropped"] == len(packets)
    assert frames.snmp6(p, p.ns_b, "Icmp6InEchos") == echos


def test_parse_error_action_pass_lets_them_through_counted(
    netns_pair: NetnsPair, monitors: Any, tmp_path: Path
) -> None:
    """parse_error_action=pass: the same packets reach the host (its IPv6 stack answers
    the echo requests behind seven extension headers) and are still counted by reason."""
    p = netns_pair
    add_v6(p)
    mon = monitors(p.ns_b, [p.dev_b], parse_error_action="pass")
    n = 5
    echos = frames.snmp6(p, p.ns_b, "Icmp6InEchos")
    packets, want = _unparseable(p, n)
    assert frames.send(p, packets, str(tmp_path / "f.hex")) == len(packets)
    wait_for(lambda: frames.snmp6(p, p.ns_b, "Icmp6InEchos") >= echos + n, 15, "the echos")
    wait_for(lambda: mon.fresh_stats()["parse_errors"] >= len(packets), 15, "the counters")
    stats = mon.fresh_stats()
    assert {k: stats[k] for k in want} == want
    assert stats["parse_dropped"] == 0


def test_nmap_fragment_scan_is_seen_per_port(netns_pair: NetnsPair, monitors: Any) -> None:
    """Attack with the real tool: ``nmap -f -sS`` (SYN scan, TCP header split into 8-byte
    fragments) against 32 ports of b. Each port must come out as its own flow carrying a
    tiny fragment, not one ports-0 flow."""
    require_root_and("nmap")
    p = netns_pair
    mon = monitors(p.ns_b, [p.dev_b])
    ports = list(range(2000, 2032))
    p.run(p.ns_a, "nmap", "-n", "-Pn", "-sS", "-f", "--max-retries", "0", "--host-timeout",
          "60s", "-p", f"{ports[0]}-{ports[-1]}", p.addr_b)  # fmt: skip
    assert mon.stop() == 0, mon.err()
    stats = mon.stats()
    assert stats["tiny_fragments"] >= 2 * len(ports) and stats["parse_errors"] == 0, stats
    b_hex = "00000000000000000000ffff" + bytes(map(int, p.addr_b.split("."))).hex()
    scanned = {}
    for e in mon.events():
        k = e["key"]
        if k["protocol"] == 6:
            scanned[k["port_hi"] if k["addr_hi"] == b_hex else k["port_lo"]] = e["state"]
    assert set(ports) <= set(scanned), sorted(scanned)
    assert all(scanned[port]["tiny_frag_count"] >= 1 for port in ports)
    assert scanned[0]["tiny_frag_count"] >= len(ports)  # the later fragments at offset 8
