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
    keys = np.zeros(2, dtype=dtype("mld_flood_key"))
    vals = np.zeros(2, dtype=dtype("mld_flood_stats"))
    keys[0]["addr"] = np.frombuffer(mapped("10.10.0.10"), np.uint8)
    keys[0]["port"], keys[0]["kind"], keys[0]["prefix_len"] = 80, C["MLD_FLOOD_DST"], 128
    keys[1]["addr"] = np.frombuffer(mapped("198.51.0.0"), np.uint8)
    keys[1]["kind"], keys[1]["prefix_len"] = C["MLD_FLOOD_SRC"], 96 + 16
    for k in keys:
        k["protocol"], k["ip_version"] = C["MLD_PROTO_TCP"], 4
    vals["flows"] = vals["packets"] = vals["syn"] = (50000, 12)
    vals["bytes"] = (50000 * 40, 12 * 40)
    vals["first_ts_ns"] = T0
    vals["last_ts_ns"] = (T0 + 10**9, T0 + 5 * 10**8)
    return keys, vals


def test_flood_records_name_the_victim_and_the_prefix_and_pass_the_pipeline() -> None:
    events = flood_events(*summaries())
    assert (events["flags"] & C["MLD_F_FLOOD"]).all()
    done = FlowPipeline(SnifferConfig()).process(events, "eth0", encode=True)
    victim, prefix = (FlowRecord.FromString(r) for r in done.records)
    assert victim.dst_addr == ipaddress.IPv4Address("10.10.0.10").packed
    assert victim.src_addr == bytes(4) and victim.dst_port == 80
    assert victim.fwd.packets == 50000 and victim.fwd.syn_count == 50000
    assert victim.bwd.packets == 0
    # One second of 50,000 SYNs: the mean gap is 20 us, the duration the summary's span.
    assert victim.last_ts_ns - victim.first_ts_ns == 10**9 and victim.fwd.iat_min_us == 20
    assert prefix.src_addr == ipaddress.IPv4Address("198.51.0.0").packed
    assert prefix.dst_addr == bytes(4) and prefix.fwd.packets == 12


def test_report_says_what_moved_once_per_interval() -> None:
    rep = OverloadReport()
    first = rep.update({"flows_summarised": 10, "flood_records": 2, "evicted": 0})
    assert first is not None and "summarised 10 new flows into 2 flood records" in first
    assert rep.update({"flows_summarised": 10, "flood_records": 2, "evicted": 0}) is None
    line = rep.update({"flows_summarised": 15, "flood_records": 3, "evicted": 4})
    assert line is not None and "summarised 5 new flows" in line and "evicted 4" in line
