"""Sends flow records to the detector as encrypted FlowBatch messages.

Records arrive packed (:meth:`FlowPublisher.add_packed`, rows of ``proto.flowpack``'s
PACKED_DTYPE from ``records.pack_records``: what the sniffer service sends) or serialized
(:meth:`FlowPublisher.add`, ``records.encode_records``). Packed rows are cut into batches
of ``transport.batch_records`` rows and sent as ``FlowBatch.packed_records``, one
``tobytes`` per batch; serialized records are framed each as a ``FlowBatch.records``
element and joined behind the header (``proto.wire.join_batch``). Either way a batch
leaves at ``transport.batch_records`` records or when its oldest record has waited
``transport.batch_max_delay_s``. ``batch_seq`` counts from 0 since start and
``started_ts_ns`` marks this run (proto/events.proto, FlowBatch).

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

import numpy as np

from control import DiscoveredSender, output_sender
from crypto_transport import Batcher, Keyring, Sender, TransportConfig
from proto.events_pb2 import FlowBatch
from proto.flowpack import PACKED_DTYPE, pack_batch_bytes
from proto.wire import frame_element, join_batch
from sniffer.config import PublishConfig
from sniffer.records import PackedFlows

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
        self._batch_records = transport.batch_records
        self._max_delay_s = transport.batch_max_delay_s
        self._pending: list[PackedFlows] = []
        self._pending_n = 0
        self._pending_since = 0.0

    def add_packed(self, packed: PackedFlows) -> None:
        """Queue packed records (rows and their strings); full batches are sent at once."""
        if not len(packed):
            return
        if not self._pending:
            self._pending_since = self._clock()
        self._pending.append(packed)
        self._pending_n += len(packed)
        while self._pending_n >= self._batch_records:
            self._send_packed(self._batch_records)

    def _send_packed(self, k: int) -> None:
        """Send the oldest ``k`` queued rows as one batch, their strings in one table.

        Rows move as bytes (one memcpy each; NumPy copies and concatenates an array of
        this many fields a field at a time, ~1 us a row); only a part whose strings sit
        at other places in the batch's table is copied and re-indexed."""
        chunks: list[bytes] = []
        table: dict[str, int] = {}
        taken = 0
        while taken < k and self._pending:
            head = self._pending[0]
            need = k - taken
            if len(head) <= need:
                self._pending.pop(0)
                part = head
            else:
                part = PackedFlows(head.rows[:need], head.strings)
                self._pending[0] = PackedFlows(head.rows[need:], head.strings)
            remap = np.array(
                [table.setdefault(text, len(table)) for text in part.strings], dtype=np.uint16
            )
            raw = np.ascontiguousarray(part.rows).tobytes()
            if np.any(remap != np.arange(len(remap))):
                rows = np.frombuffer(bytearray(raw), dtype=PACKED_DTYPE)
                rows["fast_rule"] = remap[rows["fast_rule"]]
                rows["observation_point"] = remap[rows["observation_point"]]
                raw = rows.tobytes()
            chunks.append(raw)
            taken += len(part)
        self._pending_n -= taken
        header = self._header()
        payload = pack_batch_bytes(header, b"".join(chunks), list(table))
        self._deliver(payload, taken)

    def add(self, records: Iterable[bytes]) -> None:
        """Queue serialized FlowRecords; full batches are sent at once."""
        for rec in records:
            self._batcher.add(frame_element(FlowBatch, "records", rec))

    def poll(self) -> None:
        """Send a partial batch whose oldest record has waited long enough (call often)."""
        self._batcher.poll()
        if self._pending and self._clock() - self._pending_since >= self._max_delay_s:
            self._send_packed(self._pending_n)

    def time_to_deadline(self) -> float | None:
        """Seconds until :meth:`poll` would send a partial batch (0 when overdue), None
        when nothing is queued: how long the service loop may wait for more flow events
        (sniffer.sources.XdpSource.wake_for) without holding a record past
        ``transport.batch_max_delay_s``."""
        due = self._batcher.time_to_deadline()
        if self._pending:
            mine = max(0.0, self._pending_since + self._max_delay_s - self._clock())
            due = mine if due is None else min(due, mine)
        return due

    def flush(self) -> None:
        """Send whatever is queued (at shutdown)."""
        self._batcher.flush()
        while self._pending:
            self._send_packed(self._batch_records)

    def _header(self) -> FlowBatch:
        header = FlowBatch(
            sensor_id=self.sensor_id,
            batch_seq=self.batch_seq,
            started_ts_ns=self.started_ts_ns,
            sent_ts_ns=time.time_ns(),
        )
        self.batch_seq += 1
        return header

    def _send(self, framed: list[bytes]) -> None:
        self._deliver(join_batch(self._header(), "records", framed), len(framed))

    def _deliver(self, payload: bytes, n: int) -> None:
        if self.sender.send_payload(payload):
            self.batches_sent += 1
            self.records_sent += n
        else:
            self.batches_dropped += 1
            self.records_dropped += n
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
                n,
                why,
                self.records_dropped,
            )

    def stats(self) -> dict[str, int]:
        out = {
            "records_sent": self.records_sent,
            "batches_sent": self.batches_sent,
            "records_dropped": self.records_dropped,
            "batches_dropped": self.batches_dropped,
            "records_queued": self._pending_n + len(self._batcher),
        }
        if isinstance(self.sender, DiscoveredSender):
            sender = self.sender.stats()
            out["receivers"] = sender["receivers"]
            out |= {k: v for k, v in sender.items() if k.startswith("dropped_")}
        return out

    def close(self) -> None:
        self.flush()
        self.sender.close()
