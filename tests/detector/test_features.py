"""The feature vector: the column path (offline, training) equals the record path (live)."""

from __future__ import annotations

import numpy as np
import pytest

from config import load_config
from detector.features import (
    FEATURES,
    columns_from_flows,
    columns_from_records,
    feature_matrix,
)
from proto.events_pb2 import FlowRecord
from sniffer.pipeline import FlowPipeline
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

CAPTURES = [
    "attacks/scan/masscan_tcp_0_1000.pcap",
    "attacks/dns_tunnel/iodine_elastic.pcap",
    "attacks/ddos/amp_dns_rrsig_fragmented.pcap",
    "ndpi/dns_long_domainname.pcap",
    "ndpi/quic.pcap",
]


@pytest.mark.parametrize("name", CAPTURES)
def test_record_path_gives_the_same_matrix_as_the_column_path(name: str) -> None:
    path = SHARED_DATA / "pcaps" / name
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    cfg = load_config().sniffer
    source = PcapSource([path], cfg.capture)
    pipeline = FlowPipeline(cfg)
    batches = [b for b in source.batches() if len(b[0])] + source.flush()
    assert batches
    rows = 0
    for events, obs in batches:
        done = pipeline.process(events, obs)
        from_columns = feature_matrix(columns_from_flows(done.flows, done.context))
        records = [FlowRecord.FromString(r) for r in done.records]
        from_records = feature_matrix(columns_from_records(records))
        assert from_columns.dtype == np.float32
        assert from_columns.shape == (len(records), len(FEATURES))
        np.testing.assert_array_equal(from_columns, from_records)
        rows += len(records)
    assert rows > 0


def test_features_are_computed_from_the_flow_record_only() -> None:
    # Every name is a FlowRecord field path or one of the documented derived features.
    derived = {"src_port_lt1024", "duration_s", "bytes_ratio", "packets_per_s"}
    record = FlowRecord()
    for name in FEATURES:
        if name in derived:
            continue
        obj: object = record
        for part in name.replace("ctx.", "src_context.").split("."):
            assert hasattr(obj, part), f"{name} is not a FlowRecord field"
            obj = getattr(obj, part)
    assert len(set(FEATURES)) == len(FEATURES)


def test_derived_features() -> None:
    record = FlowRecord(
        protocol=17,
        src_port=53,
        dst_port=40000,
        first_ts_ns=1_000_000_000,
        last_ts_ns=3_000_000_000,
    )
    record.fwd.packets, record.fwd.bytes = 2, 100
    record.bwd.packets, record.bwd.bytes = 4, 4039
    x = feature_matrix(columns_from_records([record]))[0]
    got = dict(zip(FEATURES, x.tolist(), strict=True))
    assert got["src_port_lt1024"] == 53
    assert got["duration_s"] == 2.0
    assert got["bytes_ratio"] == pytest.approx(4039 / 101)
    assert got["packets_per_s"] == pytest.approx(3.0)
    # An ephemeral source port counts as 1024; a zero-length flow as 1 ms long.
    record.src_port, record.last_ts_ns = 51000, record.first_ts_ns
    got = dict(
        zip(FEATURES, feature_matrix(columns_from_records([record]))[0].tolist(), strict=True)
    )
    assert got["src_port_lt1024"] == 1024
    assert got["packets_per_s"] == pytest.approx(6000.0)
