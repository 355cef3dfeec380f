"""A RAG store that stops reading must not hold up verdicts to the firewall: the scoring
service sends scored events from a bounded queue on a thread of its own, and what that
queue cannot take is dropped and counted (``events_dropped*`` in stats and /metrics)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_transport import Receiver
from detector.config import OutputConfig
from proto.events_pb2 import EventBatch
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import (
    BENIGN_PCAP,
    DETECTOR,
    RAG,
    SCAN_PCAP,
    Harness,
    Streamer,
    capture_records,
)
from tests.support import wait_for


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    """A port scan and benign web traffic: every round of them has malicious flows."""
    return capture_records(SCAN_PCAP, BENIGN_PCAP)


@pytest.fixture
def stalled_rag() -> Iterator[tuple[str, Path]]:
    """An ipc:// endpoint for a RAG receiver (small kernel buffers: ipc fills in a few
    hundred KB where loopback TCP takes megabytes)."""
    with tempfile.TemporaryDirectory(prefix="mld-slow-events-") as tmp:
        yield f"ipc://{tmp}/events", Path(tmp)


def test_a_rag_store_that_stops_reading_does_not_delay_verdicts(
    tiny_bundle: TinyBundle, records: list[bytes], stalled_rag: tuple[str, Path]
) -> None:
    """The attack: a RAG store (or anything holding the events endpoint with the store's
    key) connects, completes the CURVE handshake and then never reads. Its socket buffers
    fill, and a PUSH of scored events then waits ``transport.send_timeout_ms`` for room.
    Sent from the scoring thread (as before the fix), that wait held every following
    batch, and so the verdicts of a port scan never reached the firewall while the
    store stalled: here the send timeout is 60 s, so the firewall got nothing more for a
    minute. Now the events leave from their own thread through a bounded queue: the
    verdicts keep arriving and the events that do not fit are counted as dropped."""
    endpoint, _ = stalled_rag
    h = Harness(
        tiny_bundle.path,
        tiny_bundle.cache,
        # Small high-water marks fill the path to the stalled store quickly; the long
        # send timeout is what an operator may well configure for a store on a WAN.
        transport={"send_hwm": 2, "recv_hwm": 2, "send_timeout_ms": 60_000},
        detector={
            "events": OutputConfig(
                endpoint=endpoint, channel="events", recipients=(RAG,), pattern="push"
            ),
            "events_queue_batches": 4,
        },
    )
    # The stalled store: a real, authenticated receiver that never calls recv.
    stalled: Receiver[EventBatch] = Receiver(
        pattern="pull",
        endpoint=endpoint,
        channel="events",
        keyring=h.keys.ring(RAG, DETECTOR),
        message_type=EventBatch,
        settings=h.settings,
        bind=True,
        context=h.ctx,
    )
    streamer = Streamer(h, records, 100)
    verdicts: list[int] = []
    try:
        h.start()
        streamer.start()

        def verdicts_after_drops() -> bool:
            got = h.firewall.recv(timeout_ms=50)
            if got is not None and h.service.stats()["events_dropped"] > 0:
                verdicts.append(len(got.message.verdicts))
            return len(verdicts) >= 20

        # 20 verdict batches that reached the firewall after events were first dropped:
        # before the fix none came (the scoring thread sat in the events send).
        wait_for(verdicts_after_drops, 30, "verdicts while the RAG store does not read")
        streamer.stop.set()
        streamer.join(10)
        stats = h.service.stats()
        assert stats["events_dropped"] > 0
        assert stats["events_dropped_queue_full"] > 0
        assert stats["events_dropped"] == (
            stats["events_dropped_queue_full"] + stats["events_dropped_send"]
        )

        # Nothing lost uncounted: every scored record is sent, queued or dropped (the
        # batch in the sending thread's hands counts as queued).
        def accounted() -> bool:
            s = h.service.stats()
            out = s["events_sent"] + s["events_dropped"] + s["events_pending"]
            return out == s["events_out"] == s["records_in"] == len(streamer.sent)

        wait_for(accounted, 30, "every record sent, queued or counted as dropped")
        assert stats["verdicts_dropped"] == 0
        assert sum(verdicts) > 0
    finally:
        streamer.stop.set()
        streamer.join(10)
        stalled.close()  # before the harness destroys the context it lives in
        h.close()


def test_event_batches_composed_from_bytes_equal_the_messages(records: list[bytes]) -> None:
    """The events of packed rows are written as wire bytes (no message objects): they
    parse to the EventBatch the protobuf library builds, byte for byte."""
    from detector.service import event_batch_bytes
    from proto.events_pb2 import FlowRecord, Verdict

    recs = records[:300]
    verdicts = [
        Verdict(verdict_id=f"v-{i}", final_score=i / 300, label=i % 3) for i in range(len(recs))
    ]
    expected = EventBatch(detector_id="det-é", batch_seq=2**40 + 5)
    for rec, verdict in zip(recs, verdicts, strict=True):
        expected.events.add(
            sensor_id="sensor-1/eth0", record=FlowRecord.FromString(rec), verdict=verdict
        )
    got = event_batch_bytes(
        "det-é", 2**40 + 5, "sensor-1/eth0", recs, [v.SerializeToString() for v in verdicts]
    )
    assert got == expected.SerializeToString()
    assert EventBatch.FromString(got) == expected
    assert event_batch_bytes("d", 0, "s", [], []) == EventBatch(detector_id="d").SerializeToString()


def test_batches_of_long_items_frame_their_lengths_like_the_library() -> None:
    """Lengths are framed from a table below 2**14 bytes and encoded past it: items of
    1-, 2- and 3-byte varint lengths (and events whose body crosses 128 and 2**14) come
    out as the protobuf library serializes them."""
    from detector.service import batch_bytes, event_batch_bytes
    from proto.events_pb2 import FlowRecord, Verdict, VerdictBatch

    sizes = [0, 1, 100, 127, 128, 200, 16_300, 16_383, 16_384, 40_000]
    verdicts = [Verdict(verdict_id="v" * n) for n in sizes]
    wire = [v.SerializeToString() for v in verdicts]
    expected = VerdictBatch(detector_id="d", batch_seq=7, verdicts=verdicts)
    assert batch_bytes("d", 7, wire) == expected.SerializeToString()
    recs = [FlowRecord(observation_point="r" * n).SerializeToString() for n in reversed(sizes)]
    for sensor in ("", "s", "s" * 200):
        events = EventBatch(detector_id="d", batch_seq=1)
        for rec, verdict in zip(recs, verdicts, strict=True):
            events.events.add(sensor_id=sensor, record=FlowRecord.FromString(rec), verdict=verdict)
        got = event_batch_bytes("d", 1, sensor, recs, wire)
        assert got == events.SerializeToString()
        short = event_batch_bytes("d", 1, sensor, recs[-3:], wire[:3])
        assert EventBatch.FromString(short).events[2].verdict == verdicts[2]


def test_the_length_tables_are_the_varints() -> None:
    from detector.service import _HEAD_3, _SMALL, _VARINT
    from proto.wire import encode_varint

    assert len(_VARINT) == len(_HEAD_3) == _SMALL
    assert all(_VARINT[n] == encode_varint(n) for n in range(_SMALL))
    assert all(_HEAD_3[n] == b"\x1a" + encode_varint(n) for n in range(_SMALL))
