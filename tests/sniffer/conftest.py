"""Fixtures shared by the sniffer's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import zmq

from crypto_transport import KeyPair, Keyring, Receiver, TransportConfig
from proto.events_pb2 import FlowBatch
from sniffer.config import PublishConfig
from sniffer.publisher import FlowPublisher
from tests.support import FakeClock


@dataclass(frozen=True)
class PublisherPair:
    """A FlowPublisher ("sensor-1") and the detector's Receiver it sends to, over a real
    ZeroMQ socket on loopback with real keys; the publisher's clock is moved by hand."""

    publisher: FlowPublisher
    receiver: Receiver[FlowBatch]
    clock: FakeClock


@pytest.fixture
def publisher_pair() -> Iterator[Callable[[int], PublisherPair]]:
    """``publisher_pair(batch_records)``: a PublisherPair whose batches hold at most that many
    records and leave after 0.5 s; its sockets are closed when the test ends."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    made: list[PublisherPair] = []

    def make(batch_records: int) -> PublisherPair:
        sensor, detector = KeyPair.generate(), KeyPair.generate()
        s_ring = Keyring(sensor, grace_s=60)
        s_ring.add_peer("detector", detector.public)
        r_ring = Keyring(detector, grace_s=60)
        r_ring.add_peer("sensor-1", sensor.public, roles=["sniffer"])
        settings = TransportConfig(batch_records=batch_records, batch_max_delay_s=0.5)
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
        clock = FakeClock()
        publisher = FlowPublisher(
            publish=PublishConfig(endpoint=endpoint, recipients=("detector",)),
            transport=settings,
            keyring=s_ring,
            sensor_id="sensor-1",
            clock=clock,
        )
        made.append(PublisherPair(publisher, receiver, clock))
        return made[-1]

    try:
        yield make
    finally:
        for pair in made:
            pair.publisher.sender.close()
            pair.receiver.close()
        ctx.term()
