"""A lone record at a low rate is not held back by a large batch: the timer sends it.

A batch leaves the sniffer when it holds ``transport.batch_records`` records or when its
oldest record has waited ``transport.batch_max_delay_s``. The first bounds the per-batch
cost at high rates; the second is what keeps the time to detection bounded when the
network is quiet, e.g. one scan record between two long pauses, which would otherwise wait
for hundreds of other records before the detector sees it.

The sniffer here is the real service loop (``SnifferService.run``: ``FlowPipeline``,
packed rows, ``FlowPublisher`` over an encrypted ZeroMQ PUSH with real keys) with the
shipped config's batch settings, sending to the detector's own kind of Receiver. Its
source stands in for the XDP ring buffer only (no XDP program is needed to make one flow
event): like ``sniffer.sources.XdpSource`` it hands the loop a batch, empty when idle, at
least every ``sniffer.capture.poll_timeout_ms`` (the ring buffer's poll timeout), which is
what gives the publisher its turns to look at the clock. So a lone record leaves at most
``batch_max_delay_s + poll_timeout_ms`` after it was made (0.4 s with the shipped config),
whatever ``batch_records`` is.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import numpy.typing as npt

import native
from config import load_config
from crypto_transport import KeyPair, Keyring, Receiver
from proto.events_pb2 import FlowBatch
from proto.flowpack import batch_records
from sniffer.pipeline import FlowPipeline
from sniffer.publisher import FlowPublisher
from sniffer.service import SnifferService
from tests.sniffer.events import event

Events = npt.NDArray[np.void]


class _IdleSource:
    """Flow events the test hands in; an empty batch after ``idle_s`` without any (as
    XdpSource's ring-buffer poll returns after poll_timeout_ms)."""

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._queue: queue.Queue[Events] = queue.Queue()
        self._stop = threading.Event()
        self._empty = np.zeros(0, dtype=native.EVENT_DTYPE)

    def feed(self, ev: Events) -> None:
        self._queue.put(ev)

    def stop(self) -> None:
        self._stop.set()

    def batches(self) -> Iterator[tuple[Events, str]]:
        while not self._stop.is_set():
            try:
                ev = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                ev = self._empty
            yield ev, "test"

    def flush(self) -> list[tuple[Events, str]]:
        return []

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def test_a_lone_record_reaches_the_detector_within_the_flush_interval() -> None:
    cfg = load_config()  # the shipped batch size and flush interval
    transport = cfg.transport
    assert transport.batch_records > 1  # else every record would leave alone anyway
    max_delay = transport.batch_max_delay_s
    poll_s = cfg.sniffer.capture.poll_timeout_ms / 1000
    sensor, detector = KeyPair.generate(), KeyPair.generate()
    s_ring = Keyring(sensor, grace_s=60)
    s_ring.add_peer("detector", detector.public)
    r_ring = Keyring(detector, grace_s=60)
    r_ring.add_peer("sensor-1", sensor.public, roles=["sniffer"])
    receiver: Receiver[FlowBatch] = Receiver(
        pattern="pull",
        endpoint="tcp://127.0.0.1:*",
        channel="flows",
        keyring=r_ring,
        message_type=FlowBatch,
        settings=transport,
    )
    source = _IdleSource(poll_s)
    thread: threading.Thread | None = None
    publisher: FlowPublisher | None = None
    try:
        endpoint = receiver.bound_endpoint
        publisher = FlowPublisher(
            publish=replace(
                cfg.sniffer.publish, enabled=True, endpoint=endpoint, recipients=("detector",)
            ),
            transport=transport,
            keyring=s_ring,
            sensor_id="sensor-1",
        )
        service = SnifferService(source, FlowPipeline(cfg.sniffer), publisher)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        # One SYN to a closed port, the kind of record a slow scan sends now and then.
        fed = time.time_ns()
        source.feed(event(src="203.0.113.66", dst="10.10.0.10", sport=41000, dport=23))
        got = receiver.recv(timeout_ms=int((max_delay + 10) * 1000))
        arrived = time.time_ns()
        assert got is not None, "the lone record never left the sniffer"
        records = batch_records(got.message)
        assert [(r.src_port, r.dst_port) for r in records] == [(41000, 23)]
        # It left on the timer (not before it, the batch was far from full) ...
        waited_s = (got.message.sent_ts_ns - fed) / 1e9
        assert waited_s >= max_delay
        # ... and at the first turn of the loop after it (one ring-buffer poll later at
        # most). The 1 s only absorbs this shared machine's scheduling; without the timer
        # the record would wait for batch_records - 1 more and never arrive here.
        took_s = (arrived - fed) / 1e9
        assert took_s < max_delay + poll_s + 1.0, f"{took_s:.3f} s"
    finally:
        source.stop()
        if thread is not None:
            thread.join(timeout=10)
        if publisher is not None:
            publisher.sender.close()
        receiver.close()
