"""Flood records (sniffer/overload.py): summaries the XDP program drained become flow
records of the victim (and of a source prefix) that go through the sniffer's pipeline, and
the overload report says what was summarised and what was lost.

The summaries here are built as arrays of the program's own struct layouts (native.structs);
tests/xdp/test_overload.py makes real ones from a real flood in namespaces."""

from __future__ import annotations

import ipaddress

import numpy as np

from native.structs import CONSTANTS, dtype
from proto.events_pb2 import FlowRecord
from sniffer.config import SnifferConfig
from sniffer.overload import OverloadReport, flood_events
from sniffer.pipeline import FlowPipeline

C = CONSTANTS
T0 = 1_700_000_000 * 10**9


def mapped(a: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{a}").packed


def summaries() -> tuple[np.ndarray, np.ndarray]:
    """The victim's SYNs and its SYN-ACKs, a busy source prefix and a quiet one."""
    keys = np.zeros(4, dtype=dtype("mld_flood_key"))
    vals = np.zeros(4, dtype=dtype("mld_flood_stats"))
    for i, (a, kind, port, plen) in enumerate((
        ("10.10.0.10", C["MLD_FLOOD_DST"], 80, 128),
        ("10.10.0.10", C["MLD_FLOOD_REPLY"], 80, 128),
        ("198.51.0.0", C["MLD_FLOOD_SRC"], 0, 96 + 16),
        ("192.0.0.0", C["MLD_FLOOD_SRC"], 0, 96 + 16),
    )):  # fmt: skip
        keys[i]["addr"] = np.frombuffer(mapped(a), np.uint8)
        keys[i]["kind"], keys[i]["port"], keys[i]["prefix_len"] = kind, port, plen
        keys[i]["protocol"], keys[i]["ip_version"] = C["MLD_PROTO_TCP"], 4
    vals["flows"] = vals["packets"] = (50000, 40000, 12, 3)
    vals["syn"] = (50000, 0, 12, 3)
    vals["bytes"] = vals["packets"] * 40
    vals["first_ts_ns"] = T0
    vals["last_ts_ns"] = (T0 + 10**9, T0 + 2 * 10**9, T0 + 5 * 10**8, T0)
    return keys, vals


def test_flood_records_name_the_victim_and_the_prefix_and_pass_the_pipeline() -> None:
    events, below = flood_events(*summaries(), src_min_flows=10)
    assert below == 1, "the quiet prefix (3 flows) is counted, not a record"
    assert (events["flags"] & C["MLD_F_FLOOD"]).all()
    done = FlowPipeline(SnifferConfig()).process(events, "eth0", encode=True)
    victim, prefix = (FlowRecord.FromString(r) for r in done.records)
    assert victim.dst_addr == ipaddress.IPv4Address("10.10.0.10").packed
    assert victim.src_addr == bytes(4) and victim.dst_port == 80
    assert victim.fwd.packets == 50000 and victim.fwd.syn_count == 50000
    # Its answers (SYN-ACKs that began new flows) are the same record's backward direction.
    assert victim.bwd.packets == 40000 and victim.bwd.syn_count == 0
    # 50,000 SYNs in one second: the mean gap is 20 us; the record spans both summaries.
    assert victim.fwd.iat_min_us == 20
    assert victim.last_ts_ns - victim.first_ts_ns == 2 * 10**9
    assert prefix.src_addr == ipaddress.IPv4Address("198.51.0.0").packed
    assert prefix.dst_addr == bytes(4) and prefix.fwd.packets == 12


def test_report_says_what_moved_once_per_interval() -> None:
    rep = OverloadReport()
    first = rep.update({"flows_summarised": 10, "flood_records": 2, "evicted": 0})
    assert first is not None and "summarised 10 new flows into 2 flood records" in first
    assert rep.update({"flows_summarised": 10, "flood_records": 2, "evicted": 0}) is None
    line = rep.update({"flows_summarised": 15, "flood_records": 3, "evicted": 4})
    assert line is not None and "summarised 5 new flows" in line and "evicted 4" in line


def test_a_victims_flood_record_scores_as_the_flows_it_holds() -> None:
    """The fast rules count flows per destination, and a flood record is one record for
    50,000 SYN-only flows: it scores syn_flood 1.0 (over syn_flood_high a second) here,
    and the source-prefix record is left to the rules and the forests."""
    events, _ = flood_events(*summaries(), src_min_flows=10)
    done = FlowPipeline(SnifferConfig()).process(events, "eth0", encode=False)
    assert done.scores.rule == ["syn_flood", ""] and done.scores.score[0] == 1.0
    assert done.scores.score[1] == 0.0
