"""The offline engine counts what the parser cannot follow, by the XDP program's reasons,
and flags fragments as the program does (issue 19, finding 3).

Offline nothing can be dropped: such packets are counted and kept out of the flows, exactly
as the program counts them before dropping (or passing) them; no input may crash the
engine. The same parser (xdp/flow_parse.h) runs in both, so these captures pin down what
the live program does with the same bytes (tests/xdp/test_parse.py checks it live).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

import native
from tests.native.pcapgen import SYN, eth, ext_header, icmp, ipv4, ipv6, tcp, udp, write_pcap

T0 = 1_700_000_000 * 10**9
A, B = "10.0.0.1", "10.0.0.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
L4 = native.structs.CONSTANTS["MLD_F_L4"]
REASONS = ("parse_truncated", "parse_malformed", "parse_bad_length", "parse_ext_limit")


def feed(tmp_path: Path, frames: list[bytes]) -> tuple[np.ndarray, dict[str, int]]:
    pcap = write_pcap(tmp_path / "x.pcap", [(T0 + i * 1000, f) for i, f in enumerate(frames)])
    eng = native.FlowEngine()
    events = np.concatenate([*eng.feed_file(str(pcap)), eng.finish()])
    return events, dict(eng.stats)


def frag4(ident: int, off8: int, more: bool, data: bytes, proto: int = 6) -> bytes:
    pkt = bytearray(ipv4(A, B, proto, data, frag=(0x2000 if more else 0) | off8))
    pkt[4:6] = struct.pack("!H", ident)
    return bytes(pkt)


def test_each_reason_is_counted_and_kept_out_of_the_flows(tmp_path: Path) -> None:
    syn = tcp(40000, 80, SYN)
    good = ipv4(A, B, 6, syn)
    chain7 = b"".join(ext_header(60) for _ in range(6)) + ext_header(58) + icmp(128, 0)
    short_len = bytearray(good)
    short_len[2:4] = struct.pack("!H", 28)  # IP length 28: room for 8 of the 20 TCP bytes
    below_ihl = bytearray(good)
    below_ihl[2:4] = struct.pack("!H", 16)  # IP length shorter than its own header
    # IPv6 payload length 4, but the destination-options header behind it is 8 bytes long
    ext_past_len = bytearray(ipv6(A6, B6, 60, ext_header(6)))
    ext_past_len[4:6] = struct.pack("!H", 4)
    frames = [
        eth(ipv6(A6, B6, 60, chain7)),  # parse_ext_limit
        eth(good)[:30],  # parse_truncated: the frame ends in the IPv4 header
        eth(bytes([0x43]) + good[1:]),  # parse_malformed: IHL 3
        eth(bytes([0x55]) + good[1:]),  # parse_malformed: version 5 behind ethertype IPv4
        eth(bytes(short_len) + bytes(12)),  # parse_bad_length (Ethernet padding after it)
        eth(bytes(below_ihl)),  # parse_bad_length
        eth(bytes(ext_past_len)),  # parse_bad_length
        eth(good),  # the one good packet
    ]
    events, st = feed(tmp_path, frames)
    assert {k: st[k] for k in REASONS} == {
        "parse_truncated": 1,
        "parse_malformed": 2,
        "parse_bad_length": 3,
        "parse_ext_limit": 1,
    }
    assert st["parse_errors"] == 7 and st["ip_packets"] == 1
    assert len(events) == 1 and int(events[0]["fwd_syn"]) == 1


def test_six_extension_headers_are_still_followed(tmp_path: Path) -> None:
    chain6 = b"".join(ext_header(60) for _ in range(5)) + ext_header(6) + tcp(1, 443, SYN)
    events, st = feed(tmp_path, [eth(ipv6(A6, B6, 60, chain6))])
    assert st["parse_errors"] == 0 and len(events) == 1
    assert int(events[0]["port_hi"]) == 443 and int(events[0]["fwd_syn"]) == 1


def test_tiny_fragment_scan_one_flow_per_port(tmp_path: Path) -> None:
    """nmap -f's shape: 8 bytes of TCP header in the first fragment, the rest at offset 8."""
    frames = []
    for i, port in enumerate(range(20, 30)):
        syn = tcp(40000, port, SYN)
        frames.append(eth(frag4(100 + i, 0, True, syn[:8])))
        frames.append(eth(frag4(100 + i, 1, False, syn[8:])))
    events, st = feed(tmp_path, frames)
    assert st["parse_errors"] == 0 and st["fragments"] == 20 and st["tiny_fragments"] == 20
    by_port = {int(e["port_hi"]): e for e in events}
    assert sorted(by_port) == [0, *range(20, 30)]
    for port in range(20, 30):
        e = by_port[port]
        assert (int(e["frag_count"]), int(e["tiny_frag_count"])) == (1, 1)
        assert (
            int(e["fwd_syn"]) == 0 and int(e["flags"]) & native.structs.CONSTANTS["MLD_F_L4"] == 0
        )
    later = by_port[0]
    assert (int(later["frag_count"]), int(later["tiny_frag_count"])) == (10, 10)
    assert int(later["overlap_frag_count"]) == 0


def test_fragments_that_are_not_tiny(tmp_path: Path) -> None:
    """A datagram split the ordinary way: no tiny flag, no overlap; one that repeats bytes
    (in order, and in reverse order) counts overlaps; a gap is not an overlap."""
    body = udp(5353, 9999, bytes(40))  # 48 bytes
    frames = [
        eth(frag4(1, 0, True, body[:24], proto=17)),
        eth(frag4(1, 3, False, body[24:], proto=17)),
        # datagram 2, later fragments only: [8, 24), [16, 32) overlaps, [40, 48) after a gap
        eth(frag4(2, 1, True, bytes(16), proto=17)),
        eth(frag4(2, 2, True, bytes(16), proto=17)),
        eth(frag4(2, 5, False, bytes(8), proto=17)),
        # datagram 3 in reverse order: [32, 48), [16, 32) adjacent, [8, 24) overlaps
        eth(frag4(3, 4, False, bytes(16), proto=17)),
        eth(frag4(3, 2, True, bytes(16), proto=17)),
        eth(frag4(3, 1, True, bytes(16), proto=17)),
    ]
    events, st = feed(tmp_path, frames)
    assert st["parse_errors"] == 0 and st["fragments"] == 8 and st["tiny_fragments"] == 0
    by_port = {int(e["port_hi"]): e for e in events}
    first = by_port[9999]
    assert int(first["fwd_packets"]) == 1 and int(first["frag_count"]) == 1
    assert int(first["tiny_frag_count"]) == int(first["overlap_frag_count"]) == 0
    later = by_port[0]
    assert int(later["frag_count"]) == 7 and int(later["tiny_frag_count"]) == 0
    assert int(later["overlap_frag_count"]) == 2


def test_ipv6_tiny_first_fragment(tmp_path: Path) -> None:
    """RFC 7112: the first fragment must hold the whole header chain; this one holds only
    4 bytes of the TCP header (the ports)."""
    syn = tcp(40000, 22, SYN)
    first = struct.pack("!BBHI", 6, 0, 0x0001, 77) + syn[:4]
    later = struct.pack("!BBHI", 6, 0, 1 << 3, 77) + syn[8:]  # offset 1 (8 bytes), last
    events, st = feed(tmp_path, [eth(ipv6(A6, B6, 44, first)), eth(ipv6(A6, B6, 44, later))])
    assert st["parse_errors"] == 0 and st["fragments"] == 2 and st["tiny_fragments"] == 2
    by_port = {int(e["port_hi"]): e for e in events}
    assert sorted(by_port) == [0, 22]
    assert int(by_port[22]["tiny_frag_count"]) == 1 and int(by_port[0]["tiny_frag_count"]) == 1


def test_random_damage_never_crashes_and_adds_up(tmp_path: Path) -> None:
    """Fragments, extension chains and TCP packets cut and flipped at random: every record
    is an IP packet, a parse error of one reason, or not IP."""
    rng = np.random.default_rng(19)
    seeds = [
        eth(frag4(5, 0, True, tcp(1, 2, SYN)[:8])),
        eth(frag4(5, 1, False, tcp(1, 2, SYN)[8:])),
        eth(
            ipv6(
                A6,
                B6,
                60,
                b"".join(ext_header(60) for _ in range(5)) + ext_header(6) + tcp(3, 4, SYN),
            )
        ),
        eth(ipv6(A6, B6, 44, struct.pack("!BBHI", 17, 0, 1, 9) + udp(53, 53, bytes(20)))),
        eth(ipv4(A, B, 17, udp(1000, 53, bytes(30)))),
    ]
    frames = []
    for i in range(4000):
        f = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 4))):
            f[int(rng.integers(14, len(f)))] = int(rng.integers(0, 256))
        frames.append(bytes(f[: int(rng.integers(14, len(f) + 1))]))
    _, st = feed(tmp_path, frames)
    assert st["packets"] == len(frames)
    assert st["ip_packets"] + st["parse_errors"] + st["non_ip"] == st["packets"]
    assert sum(st[k] for k in REASONS) == st["parse_errors"] > 0
    assert st["tiny_fragments"] <= st["fragments"] <= st["ip_packets"]
