"""The publisher over a real ZeroMQ socket with real keys: records in, FlowBatch out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from proto.events_pb2 import FlowRecord

if TYPE_CHECKING:
    from tests.sniffer.conftest import PublisherPair


def test_batches_arrive_decrypted_in_order(
    publisher_pair: Callable[[int], PublisherPair],
) -> None:
    pair = publisher_pair(3)
    publisher, receiver, clock = pair.publisher, pair.receiver, pair.clock
    records = [FlowRecord(flow_id=i, src_port=i).SerializeToString() for i in range(7)]
    publisher.add(records[:4])  # one full batch of 3 leaves at once
    first = receiver.recv(timeout_ms=5000)
    assert first is not None and first.peer_id == "sensor-1"
    assert [r.flow_id for r in first.message.records] == [0, 1, 2]
    assert first.message.batch_seq == 0 and first.message.sensor_id == "sensor-1"
    publisher.poll()  # the 4th has not waited long enough
    assert receiver.recv(timeout_ms=100) is None
    clock.advance(1.0)
    publisher.poll()
    second = receiver.recv(timeout_ms=5000)
    assert second is not None and [r.flow_id for r in second.message.records] == [3]
    publisher.add(records[4:])
    publisher.close()  # flushes the last partial batch
    third = receiver.recv(timeout_ms=5000)
    assert third is not None and [r.flow_id for r in third.message.records] == [4, 5, 6]
    assert third.message.batch_seq == 2
    assert third.message.started_ts_ns == first.message.started_ts_ns
    assert publisher.stats() == {
        "records_sent": 7,
        "batches_sent": 3,
        "records_dropped": 0,
        "batches_dropped": 0,
        "records_queued": 0,
    }
