"""The publisher over a real ZeroMQ socket with real keys: records in, FlowBatch out."""

from __future__ import annotations

import zmq

from crypto_transport import KeyPair, Keyring, Receiver, TransportConfig
from proto.events_pb2 import FlowBatch, FlowRecord
from sniffer.config import PublishConfig
from sniffer.publisher import FlowPublisher
from tests.support import FakeClock


def test_batches_arrive_decrypted_in_order() -> None:
    sensor, detector = KeyPair.generate(), KeyPair.generate()
    s_ring = Keyring(sensor, grace_s=60)
    s_ring.add_peer("detector", detector.public)
    r_ring = Keyring(detector, grace_s=60)
    r_ring.add_peer("sensor-1", sensor.public, roles=["sniffer"])
    settings = TransportConfig(batch_records=3, batch_max_delay_s=0.5)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    clock = FakeClock()
    receiver = Receiver(
        pattern="pull",
        endpoint="tcp://127.0.0.1:*",
        channel="flows",
        keyring=r_ring,
        message_type=FlowBatch,
        settings=settings,
        context=ctx,
    )
    endpoint = receiver._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    publisher = FlowPublisher(
        publish=PublishConfig(endpoint=endpoint, recipients=("detector",)),
        transport=settings,
        keyring=s_ring,
        sensor_id="sensor-1",
        clock=clock,
    )
    try:
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
    finally:
        publisher.sender.close()
        receiver.close()
        ctx.term()
