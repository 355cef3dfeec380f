"""Building a batch from records that are already serialized (proto/wire.py)."""

from __future__ import annotations

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # the reference encoder

from proto import (
    DirectionStats,
    FamilyScore,
    FeatureContribution,
    FlowBatch,
    FlowRecord,
    Verdict,
    VerdictBatch,
)
from proto.wire import encode_varint, frame_element, join_batch


def _records(n: int) -> list[FlowRecord]:
    return [
        FlowRecord(
            flow_id=(1 << 63) + i,
            ip_version=4,
            src_addr=bytes([10, 0, 0, i % 256]),
            dst_addr=bytes([192, 168, 1, 1]),
            src_port=40000 + i,
            dst_port=443,
            protocol=6,
            first_ts_ns=1_700_000_000_000_000_000 + i,
            fwd=DirectionStats(packets=i + 1, bytes=60 * (i + 1), pkt_len_mean=60.5),
            observation_point="eth0",
            fast_rule="port_scan" if i % 2 else "",
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, 3, 200])
def test_join_batch_is_byte_identical_to_serializing_the_batch(n: int) -> None:
    records = _records(n)
    header = FlowBatch(sensor_id="s1", batch_seq=7, started_ts_ns=123, sent_ts_ns=456)
    framed = [frame_element(FlowBatch, "records", r.SerializeToString()) for r in records]

    payload = join_batch(header, "records", framed)

    full = FlowBatch()
    full.CopyFrom(header)
    full.records.extend(records)
    assert payload == full.SerializeToString()
    assert FlowBatch.FromString(payload) == full
    assert len(header.records) == 0  # the header is not modified


def test_join_batch_with_an_empty_header() -> None:
    records = _records(2)
    framed = [frame_element(FlowBatch, "records", r.SerializeToString()) for r in records]
    payload = join_batch(FlowBatch(), "records", framed)
    assert payload == FlowBatch(records=records).SerializeToString()


def test_large_record_gets_a_multi_byte_length() -> None:
    record = FlowRecord(observation_point="x" * 300)
    element = record.SerializeToString()
    assert len(element) > 127
    framed = frame_element(FlowBatch, "records", element)
    # tag of field 5, wire type 2 = 0x2a; then the length as a two-byte varint.
    assert framed[:1] == b"\x2a"
    assert framed[1:3] == encode_varint(len(element))
    assert len(encode_varint(len(element))) == 2
    assert FlowBatch.FromString(framed).records[0] == record


def test_join_batch_parses_equal_when_fields_follow_the_repeated_one() -> None:
    """Verdict.family_scores (5) has fields after it: not byte-identical, but equal once parsed."""
    header = Verdict(verdict_id="v1", ml_score=0.9, family="scan", model_version="m1")
    scores = [FamilyScore(family="scan", score=0.9), FamilyScore(family="ddos", score=0.1)]
    framed = [frame_element(Verdict, "family_scores", s.SerializeToString()) for s in scores]
    joined = Verdict.FromString(join_batch(header, "family_scores", framed))
    full = Verdict()
    full.CopyFrom(header)
    full.family_scores.extend(scores)
    assert joined == full


def test_frame_element_for_other_batch_types() -> None:
    verdicts = [Verdict(verdict_id=f"v{i}", final_score=0.5) for i in range(3)]
    framed = [frame_element(VerdictBatch, "verdicts", v.SerializeToString()) for v in verdicts]
    payload = join_batch(VerdictBatch(detector_id="d1", batch_seq=2), "verdicts", framed)
    expected = VerdictBatch(detector_id="d1", batch_seq=2, verdicts=verdicts)
    assert payload == expected.SerializeToString()


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_encode_varint_known_values(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded


@pytest.mark.parametrize("value", [2, 255, 256, 65535, 2**31, 2**32 + 5, 2**63])
def test_encode_varint_matches_protobuf(value: int) -> None:
    assert encode_varint(value) == _VarintBytes(value)


def test_encode_varint_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        encode_varint(-1)


@pytest.mark.parametrize(
    ("message_type", "field"),
    [
        (FlowRecord, "fwd"),  # a message, not repeated
        (FlowBatch, "sensor_id"),  # a scalar
        (FlowBatch, "batch_seq"),
        (Verdict, "label"),  # an enum
        (FlowBatch, "no_such_field"),
    ],
)
def test_frame_element_refuses_a_field_that_is_not_a_repeated_message(
    message_type: type[FlowBatch], field: str
) -> None:
    with pytest.raises(ValueError, match="is not a repeated message field"):
        frame_element(message_type, field, b"")


def test_frame_element_refuses_a_repeated_scalar_field() -> None:
    from proto import BlockDecision

    with pytest.raises(ValueError, match=r"BlockDecision\.verdict_ids is not a repeated"):
        frame_element(BlockDecision, "verdict_ids", b"v1")


def test_frame_element_accepts_other_repeated_message_fields() -> None:
    fc = FeatureContribution(name="fwd.syn_count", value=3.0, weight=0.5)
    framed = frame_element(Verdict, "top_features", fc.SerializeToString())
    assert Verdict.FromString(framed).top_features[0] == fc


def test_join_batch_refuses_a_header_that_already_holds_records() -> None:
    header = FlowBatch(sensor_id="s1", records=_records(1))
    with pytest.raises(ValueError, match="already holds records"):
        join_batch(header, "records", [])


def test_join_batch_refuses_a_scalar_field() -> None:
    with pytest.raises(ValueError, match="is not a repeated message field"):
        join_batch(FlowBatch(), "sensor_id", [])


def test_join_batch_refuses_an_unknown_field_with_value_error() -> None:
    with pytest.raises(ValueError, match="is not a repeated message field"):
        join_batch(FlowBatch(), "recordz", [])
