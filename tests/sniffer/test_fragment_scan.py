"""A tiny-fragment port scan through the whole sniffer, offline (issue 19, finding 3).

The capture is built here (tests/native/pcapgen.py): a SYN scan of 64 ports whose first
fragments hold 8 bytes of the TCP header each, as ``nmap -f`` sends it. Before the fix the
engine made one flow with ports 0 of it and no rule fired; now every port is its own
record carrying its fragment counters, the scan is scored by a scan rule, and the source's
counters say how many fragments were tiny.
"""

from __future__ import annotations

import struct
from pathlib import Path

from proto.events_pb2 import FlowRecord
from sniffer.config import SnifferConfig
from sniffer.pipeline import FlowPipeline
from sniffer.service import SnifferService
from sniffer.sources import PcapSource
from tests.native.pcapgen import SYN, eth, ipv4, tcp, write_pcap

T0 = 1_700_000_000 * 10**9
ATTACKER, VICTIM = "203.0.113.9", "192.0.2.80"
PORTS = range(1, 65)


def _frag(ident: int, off8: int, more: bool, data: bytes) -> bytes:
    pkt = bytearray(ipv4(ATTACKER, VICTIM, 6, data, frag=(0x2000 if more else 0) | off8))
    pkt[4:6] = struct.pack("!H", ident)
    return eth(bytes(pkt))


def test_tiny_fragment_scan_is_seen_per_port(tmp_path: Path) -> None:
    frames = []
    for i, port in enumerate(PORTS):
        syn = tcp(40000, port, SYN)
        frames.append((T0 + i * 1_000_000, _frag(i, 0, True, syn[:8])))
        frames.append((T0 + i * 1_000_000 + 1000, _frag(i, 1, False, syn[8:])))
    pcap = write_pcap(tmp_path / "fscan.pcap", frames)
    cfg = SnifferConfig()
    records: list[FlowRecord] = []

    def sink(done):  # type: ignore[no-untyped-def]
        records.extend(FlowRecord.FromString(r) for r in done.records)

    source = PcapSource([pcap], cfg.capture)
    SnifferService(source, FlowPipeline(cfg), None, (sink,)).run()
    by_port = {r.dst_port: r for r in records}
    assert sorted(by_port) == [0, *PORTS]
    for port in PORTS:
        r = by_port[port]
        assert (r.frag_count, r.tiny_frag_count, r.overlap_frag_count) == (1, 1, 0)
    assert by_port[0].frag_count == by_port[0].tiny_frag_count == len(PORTS)
    # Scored by a scan rule: in full once the source has sent tiny_fragments_high of them.
    full = sum(r.fast_score == 1.0 for r in records)
    assert full >= len(records) - cfg.rules.tiny_fragments_high, [r.fast_score for r in records]
    assert {r.fast_rule for r in records if r.fast_score > 0} <= {"tiny_fragments", "port_scan"}
    assert by_port[0].fast_rule == "tiny_fragments"
    st = source.stats()
    assert st["fragments"] == st["tiny_fragments"] == 2 * len(PORTS)
    assert st["parse_errors"] == 0
