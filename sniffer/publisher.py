"""Sends flow records to the detector as encrypted FlowBatch messages.

Records arrive serialized (``records.encode_records``); the publisher frames each once as a
``FlowBatch.records`` element, collects them with crypto_transport's Batcher (a batch
leaves at ``transport.batch_records`` records or when its oldest record has waited
``transport.batch_max_delay_s``), and joins each batch behind its header with
``proto.wire.join_batch`` instead of rebuilding a message tree. ``batch_seq`` counts from 0
since start and ``started_ts_ns`` marks this run (proto/events.proto, FlowBatch).

With ``discover`` (the control plane is on) and pattern push, batches go to the live
detectors registered in etcd instead of ``publish.endpoint`` (control.DiscoveredSender,
in turn when there are several); the service keeps it in step with
:meth:`DiscoveredSender.update`. While no detector is registered a batch is dropped and
counted (``dropped_no_receiver``).

Counters: ``records_sent``/``batches_sent``, and ``records_dropped``/``batches_dropped``
for batches the transport could not deliver in time (PUSH), a full subscriber refused
(PUB) or no registered detector could take (discovery); the channel's own counters say
which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from control import DiscoveredSender, output_sender
from crypto_transport import Batcher, Keyring, Sender, TransportConfig
from proto.events_pb2 import FlowBatch
from proto.wire import frame_element, join_batch
from sniffer.config import PublishConfig

__all__ = ["FlowPublisher"]

log = logging.getLogger(__name__)

FlowSender = Sender | DiscoveredSender

_DROP_LOG_INTERVAL_S = 10.0


class FlowPublisher:
    """Batches serialized FlowRecords and sends them over an encrypted channel."""

    def __init__(
        self,
        *,
        publish: PublishConfig,
        transport: TransportConfig,
        keyring: Keyring,
        sensor_id: str,
        sender: FlowSender | None = None,
        discover: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``sender`` replaces the channel ``publish`` describes; ``discover`` sends a
        push channel to the detectors registered in etcd (see the module docstring)."""
        self.sensor_id = sensor_id
        self.started_ts_ns = time.time_ns()
        self.batch_seq = 0
        self.records_sent = 0
        self.batches_sent = 0
        self.records_dropped = 0
        self.batches_dropped = 0
        self.sender: FlowSender = sender or output_sender(
            publish,
            sender_id=sensor_id,
            keyring=keyring,
            settings=transport,
            discover=discover,
            component="detector",
            endpoint_name="flows",
        )
        self._clock = clock
        self._next_drop_log = 0.0
        self._batcher: Batcher[bytes] = Batcher(
            self._send,
            max_items=transport.batch_records,
            max_delay_s=transport.batch_max_delay_s,
            clock=clock,
        )

    def add(self, records: Iterable[bytes]) -> None:
        """Queue serialized FlowRecords; full batches are sent at once."""
        for rec in records:
            self._batcher.add(frame_element(FlowBatch, "records", rec))

    def poll(self) -> None:
        """Send a partial batch whose oldest record has waited long enough (call often)."""
        self._batcher.poll()

    def flush(self) -> None:
        """Send whatever is queued (at shutdown)."""
        self._batcher.flush()

    def _send(self, framed: list[bytes]) -> None:
        header = FlowBatch(
            sensor_id=self.sensor_id,
            batch_seq=self.batch_seq,
            started_ts_ns=self.started_ts_ns,
            sent_ts_ns=time.time_ns(),
        )
        self.batch_seq += 1
        if self.sender.send_payload(join_batch(header, "records", framed)):
            self.batches_sent += 1
            self.records_sent += len(framed)
        else:
            self.batches_dropped += 1
            self.records_dropped += len(framed)
            now = self._clock()
            if now < self._next_drop_log:
                return
            self._next_drop_log = now + _DROP_LOG_INTERVAL_S
            if isinstance(self.sender, DiscoveredSender) and not self.sender.instances:
                why = "no detector is registered in etcd"
            else:
                why = f"{self.sender.endpoint} is not keeping up"
            log.warning(
                "dropped a batch of %d records (%s); %d dropped so far",
                len(framed),
                why,
                self.records_dropped,
            )

    def stats(self) -> dict[str, int]:
        out = {
            "records_sent": self.records_sent,
            "batches_sent": self.batches_sent,
            "records_dropped": self.records_dropped,
            "batches_dropped": self.batches_dropped,
        }
        if isinstance(self.sender, DiscoveredSender):
            sender = self.sender.stats()
            out["receivers"] = sender["receivers"]
            out |= {k: v for k, v in sender.items() if k.startswith("dropped_")}
        return out

    def close(self) -> None:
        self.flush()
        self.sender.close()
