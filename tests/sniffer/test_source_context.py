"""source_context.py and sliding_window.py on crafted flows."""

from __future__ import annotations

import numpy as np
import pytest

from base.errors import ConfigError
from native.structs import CONSTANTS
from proto.events_pb2 import FlowRecord
from sniffer.config import ContextConfig
from sniffer.records import encode_records, flow_columns
from sniffer.sliding_window import SlidingWindows
from sniffer.source_context import SourceContextTracker, VerifiedSources
from tests.sniffer.events import T0, event, events, wire_name

S = 1_000_000_000


def _ctx(ev: np.ndarray, **cfg: float) -> dict[str, np.ndarray]:
    return SourceContextTracker(ContextConfig(**cfg)).update(flow_columns(ev, "x"))  # type: ignore[arg-type]


def test_distinct_counts_and_rates_over_the_window() -> None:
    ev = events(
        event(dst="198.51.100.1", dport=22, ts=T0, fwd_syn=1),
        event(dst="198.51.100.2", dport=23, ts=T0 + S, fwd_syn=1),
        event(dst="198.51.100.2", dport=23, ts=T0 + 2 * S, fwd_syn=1, fwd_ack=3),
        event(src="192.0.2.9", dst="198.51.100.3", dport=80, ts=T0 + 3 * S),
    )
    ctx = _ctx(ev, window_s=10.0)
    assert ctx["distinct_dst_addrs"].tolist() == [1, 2, 2, 1]
    assert ctx["distinct_dst_ports"].tolist() == [1, 2, 2, 1]
    assert ctx["syn_without_ack_ratio"].tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.0])
    assert ctx["flows_per_s"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.1])
    assert ctx["window_s"].tolist() == [10.0] * 4


def test_old_flows_leave_the_window() -> None:
    ev = events(*(event(dst=f"198.51.100.{i}", ts=T0 + i * S) for i in range(1, 21)))
    ctx = _ctx(ev, window_s=5.0)
    # At t = 20 s the window [15 s, 20 s] holds the flows of seconds 15..20.
    assert ctx["distinct_dst_addrs"][-1] == 6


def test_non_tcp_flows_do_not_count_for_the_syn_ratio() -> None:
    ev = events(event(protocol=17, dport=53), event(protocol=1, icmp_type=8))
    ctx = _ctx(ev)
    assert ctx["syn_without_ack_ratio"].tolist() == [0.0, 0.0]
    # ICMP type/code are not ports.
    assert ctx["distinct_dst_ports"].tolist() == [1, 1]


def test_dns_rate_length_and_entropy() -> None:
    name = "aZ3kq9XbL2mW7rT0.tunnel.example"
    wire = wire_name(name)
    raw = np.zeros(48, dtype=np.uint8)
    raw[: min(48, len(wire))] = np.frombuffer(wire[:48], dtype=np.uint8)
    ev = event(
        protocol=17,
        dport=53,
        dns_queries=30,
        dns_qname_len=len(wire),
        dns_qname_len_sum=30 * len(wire),
        dns_qname=raw,
    )
    ctx = _ctx(ev, window_s=60.0)
    assert ctx["dns_query_rate"][0] == pytest.approx(0.5)
    assert ctx["dns_qname_mean_len"][0] == pytest.approx(len(name))
    assert 3.5 < ctx["dns_qname_entropy"][0] < 5.0
    assert _ctx(event())["dns_qname_mean_len"][0] == 0.0


def test_caps_bound_keys_and_entries() -> None:
    w = SlidingWindows(
        window_s=100.0, n_sums=1, n_distinct=1, max_keys=3, max_entries_per_key=4, max_entries=10
    )
    for i in range(10):
        win = w.add("a", T0 + i, (1.0,), (i,))
    assert win.count == 4 and win.sums == [4.0] and win.distinct_count(0) == 4
    for k in "bcde":
        w.add(k, T0, (1.0,), (0,))
    assert len(w) == 3 and w.evicted_keys == 2
    assert w.entries <= 10


def _verified(ev: np.ndarray) -> np.ndarray:
    ev["flags"] |= CONSTANTS["MLD_F_HS_VERIFIED"]
    return ev


def test_verified_sources_mark_records_after_a_verified_handshake() -> None:
    """A source is src_verified from its first flow whose handshake verified, for
    verified_ttl_s; a source that only ever sent SYNs (forgeable) never is."""
    forged, real = "8.8.8.8", "203.0.113.66"
    ev = events(
        event(src=forged, ts=T0, fwd_syn=1),
        event(src=real, ts=T0 + S, fwd_syn=1),  # before its handshake: not yet
        _verified(event(src=real, dport=22, ts=T0 + 2 * S, fwd_syn=1, fwd_ack=2)),
        event(src=real, dport=23, ts=T0 + 3 * S, fwd_syn=1),  # SYN scan after it: verified
        event(src=forged, ts=T0 + 4 * S, fwd_syn=1),
        event(src=real, dport=24, ts=T0 + 20 * S, fwd_syn=1),  # past the TTL: lapsed
    )
    flows = flow_columns(ev, "x")
    assert flows["handshake_verified"].tolist() == [False, False, True, False, False, False]
    tracker = VerifiedSources(ContextConfig(verified_ttl_s=10.0))
    assert tracker.update(flows).tolist() == [False, False, True, True, False, False]
    assert len(tracker) == 0  # the lapsed stamp was dropped


def test_verified_sources_are_bounded() -> None:
    ev = events(*(_verified(event(src=f"192.0.2.{i}", ts=T0 + i)) for i in range(1, 11)))
    tracker = VerifiedSources(ContextConfig(verified_max_sources=4))
    assert tracker.update(flow_columns(ev, "x")).all()
    assert len(tracker) == 4 and tracker.evicted == 6
    with pytest.raises(ConfigError, match="verified_ttl_s"):
        VerifiedSources(ContextConfig(verified_ttl_s=0.0))


def test_records_carry_the_handshake_flags() -> None:
    ev = events(_verified(event(src="203.0.113.66", fwd_ack=1)), event(src="8.8.8.8"))
    flows = flow_columns(ev, "x")
    raw = encode_records(flows, src_verified=np.array([True, False]))
    recs = [FlowRecord.FromString(r) for r in raw]
    assert [(r.handshake_verified, r.src_verified) for r in recs] == [(True, True), (False, False)]


def test_interim_records_count_a_flow_once_and_add_only_what_grew() -> None:
    """A DNS flow exported as two interim records (cumulative: 10, then 20 queries) and a
    final one (24 queries), with a SYN-only TCP flow of the same source between them: the
    flow counts once in flows_per_s and its queries once each, so its final record's
    context is what the same two flows give without interim records (issue 18)."""
    from sniffer.interim import FlowHistory

    interim = CONSTANTS["MLD_F_INTERIM"]
    dns = {"protocol": 17, "dport": 53, "ts": T0}
    parts = [
        event(**dns, last_ts_ns=T0 + 5 * S, dns_queries=10, dns_qname_len_sum=10 * 22),
        event(**dns, last_ts_ns=T0 + 10 * S, dns_queries=20, dns_qname_len_sum=20 * 22),
        event(dst="198.51.100.9", ts=T0 + 11 * S, fwd_syn=1),
        event(**dns, last_ts_ns=T0 + 12 * S, dns_queries=24, dns_qname_len_sum=24 * 22),
    ]
    for p in parts[:2]:
        p["flags"] |= interim
    flows = flow_columns(events(*parts), "x")
    assert flows["interim"].tolist() == [True, True, False, False]
    assert len(set(flows["flow_id"][[0, 1, 3]].tolist())) == 1
    history = FlowHistory(max_flows=100)
    ctx = SourceContextTracker(ContextConfig(window_s=60.0)).update(flows, history.previous(flows))
    assert ctx["flows_per_s"].tolist() == pytest.approx([1 / 60, 1 / 60, 2 / 60, 2 / 60])
    assert ctx["dns_query_rate"].tolist() == pytest.approx([10 / 60, 20 / 60, 20 / 60, 24 / 60])
    assert ctx["dns_qname_mean_len"].tolist() == pytest.approx([20.0] * 4)
    assert ctx["syn_without_ack_ratio"].tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])
    assert len(history) == 0, "the final record forgets the flow"
    # The same flows without interim records: the final record's context is the same.
    plain = _ctx(events(parts[2], parts[3]), window_s=60.0)
    for name, col in plain.items():
        assert ctx[name][-1] == pytest.approx(col[-1]), name
    # Without the history every record counts as a flow of its own (the old behaviour).
    again = _ctx(events(*parts), window_s=60.0)
    assert again["flows_per_s"][-1] == pytest.approx(4 / 60)
