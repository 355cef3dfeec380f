"""The packed form of FlowRecords (proto/flowpack.py): the same records and features as
the repeated-message form, from real captures (IPv4 and IPv6, TCP, UDP, ICMP, DNS), and
the publisher cutting packed rows into batches with one string table each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import native
from config import load_config
from detector.features import columns_from_packed, columns_from_records, feature_matrix
from detector.verdicts import flow_ref
from native import _flowengine
from proto.events_pb2 import FlowBatch, FlowRecord
from proto.flowpack import (
    ENCODE_OPS,
    FLAG_BITS,
    PACKED_DTYPE,
    PACKED_LAYOUT,
    PackedFormatError,
    batch_records,
    flow_keys,
    pack_batch,
    to_records,
    unpack_batch,
)
from sniffer.pipeline import FlowPipeline
from sniffer.records import MLD_F_INTERIM, PackedFlows
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

if TYPE_CHECKING:
    from tests.sniffer.conftest import PublisherPair

CAPTURES = [
    SHARED_DATA / "pcaps/ndpi/dns-exf.pcap",
    SHARED_DATA / "pcaps/ndpi/http_ipv6.pcap",
    SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap",
    SHARED_DATA / "pcaps/ndpi/reddit.pcap",
    SHARED_DATA / "pcaps/suricata-verify/bug-4663-03__icmp_and_ssh.pcap",
]


def _processed(path: Path) -> list[tuple[list[bytes], np.ndarray, list[str]]]:
    """Per event array of the capture: serialized records, packed rows and strings."""
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    scfg = load_config().sniffer
    source = PcapSource([path], scfg.capture)
    pipeline = FlowPipeline(scfg)
    out = []
    for events, obs in [*source.batches(), *source.flush()]:
        if len(events):
            done = pipeline.process(events, obs, pack=True)
            assert done.packed is not None
            out.append((done.records, done.packed.rows, done.packed.strings))
    return out


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_packed_rows_hold_the_records_and_give_the_same_features(path: Path) -> None:
    parts = _processed(path)
    assert parts
    for records, rows, strings in parts:
        payload = pack_batch(FlowBatch(sensor_id="s"), rows, strings)
        back, back_strings = unpack_batch(FlowBatch.FromString(payload))
        decoded = [FlowRecord.FromString(r) for r in records]
        # Every field, src_context and booleans included, exactly as the message has it.
        assert to_records(back, back_strings) == decoded
        np.testing.assert_array_equal(
            feature_matrix(columns_from_packed(back)),
            feature_matrix(columns_from_records(decoded)),
        )
        # The same records serialized in C (the detector's scored events).
        native_bytes = native.packed_record_bytes(back, back_strings)
        assert [FlowRecord.FromString(b) for b in native_bytes] == decoded
        # What a verdict names when only verdicts are built (no events, no EVE).
        keys = flow_keys(back)
        assert [flow_ref(k, "s") for k in keys] == [flow_ref(r, "s") for r in decoded]
        assert [k.src_verified for k in keys] == [r.src_verified for r in decoded]


def test_interim_records_keep_their_flag_in_the_packed_rows() -> None:
    """FlowRecord.interim (issue 18) travels in the flags byte (layout 2): packed rows of
    interim records give interim records back, in Python and in C, or the detector would
    take each one for its flow's final record and alert and block it again."""
    path = CAPTURES[0]
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    scfg = load_config().sniffer
    source = PcapSource([path], scfg.capture)
    pipeline = FlowPipeline(scfg)
    seen = 0
    for events, obs in [*source.batches(), *source.flush()]:
        if not len(events):
            continue
        events = events.copy()
        events["flags"][::2] |= MLD_F_INTERIM  # every other record an interim update
        done = pipeline.process(events, obs, pack=True)
        assert done.packed is not None
        decoded = [FlowRecord.FromString(r) for r in done.records]
        want = [r.interim for r in decoded]
        assert (any(want) and not all(want)) or len(want) == 1
        rows, strings = done.packed.rows, done.packed.strings
        flagged = ((rows["flags"] & FLAG_BITS["interim"]) != 0).tolist()
        assert flagged == want
        assert to_records(rows, strings) == decoded
        native_bytes = native.packed_record_bytes(rows, strings)
        assert [FlowRecord.FromString(b) for b in native_bytes] == decoded
        seen += sum(want)
    assert seen


def test_flow_keys_keep_addresses_that_end_in_zero_bytes() -> None:
    rows = np.zeros(3, dtype=PACKED_DTYPE)
    rows["ip_version"] = [4, 6, 4]
    rows["src_addr"][0, :4] = [10, 0, 0, 0]
    rows["src_addr"][2, :4] = [0, 0, 0, 0]
    rows["dst_addr"][1, :2] = [0x20, 0x01]
    rows["flags"] = [2, 0, 3]
    keys = flow_keys(rows)
    assert [k.src_addr for k in keys] == [bytes([10, 0, 0, 0]), bytes(16), bytes(4)]
    assert keys[1].dst_addr == b"\x20\x01" + bytes(14)
    assert [k.src_verified for k in keys] == [True, False, True]
    assert to_records(rows, [""])[0].src_addr == bytes([10, 0, 0, 0])


def test_packed_rows_of_another_layout_or_size_are_refused() -> None:
    rows = np.zeros(2, dtype=PACKED_DTYPE)
    good = FlowBatch.FromString(pack_batch(FlowBatch(), rows, [""]))
    assert len(batch_records(good)) == 2
    # Layout 1 (before FlowRecord.interim had its flag bit) would read interim rows as
    # final records; a later layout may hold columns this version does not know.
    for layout in (1, PACKED_LAYOUT + 1):
        other = FlowBatch.FromString(good.SerializeToString())
        other.packed_layout = layout
        with pytest.raises(PackedFormatError, match=f"layout {layout}"):
            unpack_batch(other)
    cut = FlowBatch.FromString(good.SerializeToString())
    cut.packed_records = cut.packed_records[:-1]
    with pytest.raises(PackedFormatError, match="whole number"):
        unpack_batch(cut)
    with pytest.raises(PackedFormatError, match="string 0; the batch has 0"):
        unpack_batch(FlowBatch.FromString(pack_batch(FlowBatch(), rows, [])))
    bad_index = rows.copy()
    bad_index["fast_rule"] = 5
    with pytest.raises(PackedFormatError, match="string 5"):
        unpack_batch(FlowBatch.FromString(pack_batch(FlowBatch(), bad_index, [""])))


def test_publisher_cuts_packed_rows_into_batches_with_one_string_table(
    publisher_pair: Callable[[int], PublisherPair],
) -> None:
    parts = _processed(SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap")
    parts += _processed(SHARED_DATA / "pcaps/ndpi/dns-exf.pcap")
    expected = [FlowRecord.FromString(r) for records, _, _ in parts for r in records]
    pair = publisher_pair(7)
    publisher, receiver, clock = pair.publisher, pair.receiver, pair.clock
    for _, rows, strings in parts:
        publisher.add_packed(PackedFlows(rows, strings))
    queued = publisher.stats()["records_queued"]
    assert queued == len(expected) % 7
    clock.advance(1.0)
    publisher.poll()  # the partial batch has waited long enough
    got: list[FlowRecord] = []
    seqs = []
    while len(got) < len(expected):
        batch = receiver.recv(timeout_ms=5000)
        assert batch is not None
        assert not batch.message.records and batch.message.packed_layout == PACKED_LAYOUT
        assert len(batch.message.packed_strings) <= 8
        got += batch_records(batch.message)
        seqs.append(batch.message.batch_seq)
    assert got == expected  # rules and observation points remapped per batch
    assert seqs == list(range(-(-len(expected) // 7)))
    assert publisher.stats()["records_sent"] == len(expected)
    assert publisher.stats()["records_queued"] == 0


def test_every_flow_record_field_has_its_place_in_the_packed_rows() -> None:
    """A field added to FlowRecord needs its column in PACKED_DTYPE (or a FLAG_BITS bit)
    and a new PACKED_LAYOUT, or the packed form would drop it."""
    names = set(PACKED_DTYPE.names or ())
    prefix = {"fwd": "fwd.", "bwd": "bwd.", "src_context": "ctx.", "dns_window": "dns."}
    for f in FlowRecord.DESCRIPTOR.fields:
        if f.message_type is not None:
            missing = [
                s.name for s in f.message_type.fields if prefix[f.name] + s.name not in names
            ]
            assert not missing, (f.name, missing)
        elif f.type == f.TYPE_BOOL:
            assert f.name in FLAG_BITS, f.name
        else:
            assert f.name in names, f.name


def test_native_encoder_refuses_bad_programs_and_string_indexes() -> None:
    rows = np.zeros(2, dtype=PACKED_DTYPE)
    rows["fast_rule"] = 3
    with pytest.raises(ValueError, match="names string 3"):
        native.packed_record_bytes(rows, [""])
    bad = ENCODE_OPS.copy()
    bad[0, 2] = PACKED_DTYPE.itemsize  # an offset past the row
    with pytest.raises(ValueError, match="out of the row"):
        _flowengine.rows_to_protobuf(rows, PACKED_DTYPE.itemsize, bad, [b""])
    with pytest.raises(ValueError, match="wrong size"):
        _flowengine.rows_to_protobuf(rows.tobytes()[:-1], PACKED_DTYPE.itemsize, ENCODE_OPS, [])
