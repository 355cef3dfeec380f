"""records.py: events -> FlowRecord fields, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import native
from proto.events_pb2 import FlowRecord
from sniffer.records import decode_qname, encode_records, flow_columns, shannon_entropy
from tests.sniffer.events import T0, event, events, wire_name


def _one(ev: np.ndarray) -> FlowRecord:
    return FlowRecord.FromString(encode_records(flow_columns(ev, "eth0"))[0])


@pytest.mark.parametrize(
    ("src", "dst"), [("192.0.2.1", "198.51.100.7"), ("198.51.100.7", "192.0.2.1")]
)
def test_initiator_flag_picks_source_and_ports(src: str, dst: str) -> None:
    rec = _one(event(src, dst, sport=40000, dport=443))
    assert rec.src_addr == bytes(map(int, src.split(".")))
    assert rec.dst_addr == bytes(map(int, dst.split(".")))
    assert (rec.src_port, rec.dst_port) == (40000, 443)
    assert rec.ip_version == 4 and rec.protocol == 6
    assert rec.observation_point == "eth0"


def test_ipv6_keeps_16_bytes() -> None:
    rec = _one(event("2001:db8::2", "2001:db8::1", protocol=17, sport=5353, dport=53))
    assert len(rec.src_addr) == 16 and rec.src_addr.endswith(b"\x00\x02")
    assert rec.dst_addr.endswith(b"\x00\x01") and rec.ip_version == 6


def test_icmp_ports_are_type_and_code() -> None:
    rec = _one(event(protocol=1, icmp_type=8, icmp_code=0))
    assert (rec.src_port, rec.dst_port) == (8, 0)
    rec = _one(event(protocol=58, icmp_type=1, icmp_code=4))
    assert (rec.src_port, rec.dst_port) == (1, 4)


def test_length_and_gap_statistics() -> None:
    # fwd: packets of 100, 200, 600 bytes at t = 0, 1000 us, 4000 us.
    gaps_ns = [1_000_000, 3_000_000]
    ev = event(
        fwd_packets=3,
        fwd_bytes=900,
        fwd_len_sumsq=100**2 + 200**2 + 600**2,
        fwd_len_min=100,
        fwd_len_max=600,
        fwd_iat_sum_ns=sum(gaps_ns),
        fwd_iat_min_ns=min(gaps_ns),
        fwd_iat_max_ns=max(gaps_ns),
        fwd_iat_sumsq=sum((g >> 10) ** 2 for g in gaps_ns),
        fwd_syn=1,
        fwd_ack=2,
        fwd_init_window=64240,
        bwd_packets=1,
        bwd_bytes=60,
        bwd_len_sumsq=3600,
        bwd_iat_sum_ns=0,
        end_reason=1,
        vlan_id=42,
        first_ts_ns=T0,
        last_ts_ns=T0 + 4_000_000,
    )
    rec = _one(ev)
    f = rec.fwd
    assert (f.packets, f.bytes, f.pkt_len_min, f.pkt_len_max) == (3, 900, 100, 600)
    assert f.pkt_len_mean == pytest.approx(300.0)
    assert f.pkt_len_std == pytest.approx(math.sqrt((200**2 + 100**2 + 300**2) / 3), rel=1e-6)
    assert f.iat_mean_us == pytest.approx(2000.0)
    assert (f.iat_min_us, f.iat_max_us) == (1000.0, 3000.0)
    # Population std of 1000 and 3000 us is 1000 us; the 1024-ns units truncate a little.
    assert f.iat_std_us == pytest.approx(1000.0, abs=2.0)
    assert (f.syn_count, f.ack_count, f.init_window) == (1, 2, 64240)
    b = rec.bwd
    assert (b.packets, b.pkt_len_mean, b.pkt_len_std) == (1, 60.0, 0.0)
    assert (b.iat_mean_us, b.iat_std_us, b.iat_min_us, b.iat_max_us) == (0, 0, 0, 0)
    assert rec.end_reason == 1 and rec.vlan_id == 42
    assert rec.last_ts_ns - rec.first_ts_ns == 4_000_000


def test_negative_variance_from_rounding_is_clamped() -> None:
    rec = _one(event(fwd_packets=3, fwd_bytes=300, fwd_len_sumsq=29999))
    assert rec.fwd.pkt_len_std == 0.0


def test_flow_id_is_the_engines() -> None:
    ev = events(event(), event(dport=81))
    cols = flow_columns(ev, "x")
    assert cols["flow_id"].tolist() == native.flow_ids(ev).tolist()


def test_dns_name_decoding_and_length() -> None:
    name = wire_name("www.example.com")
    raw = np.zeros(48, dtype=np.uint8)
    raw[: len(name)] = np.frombuffer(name, dtype=np.uint8)
    ev = event(
        protocol=17,
        dport=53,
        dns_queries=2,
        dns_qname_len=len(name),
        dns_qname_len_sum=2 * len(name),
        dns_qname=raw,
    )
    cols = flow_columns(ev, "x")
    assert cols["dns_name_chars"].tolist() == [2 * len("www.example.com")]
    assert cols.dns_entropy[0] == pytest.approx(shannon_entropy("www.example.com"))
    assert decode_qname(name, len(name)) == "www.example.com"
    # Truncated storage: the labels stored so far.
    assert decode_qname(name[:7], 200) == "www.ex"


def test_entropy_values() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abab") == pytest.approx(1.0)
    assert shannon_entropy("abcdefgh") == pytest.approx(3.0)


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        flow_columns(np.zeros(1, dtype=np.uint64), "x")  # type: ignore[arg-type]


def test_fragment_counters_are_exported() -> None:
    rec = _one(events(event(frag_count=7, tiny_frag_count=3, overlap_frag_count=2)))
    assert (rec.frag_count, rec.tiny_frag_count, rec.overlap_frag_count) == (7, 3, 2)
    assert _one(events(event())).frag_count == 0
