"""The RAG store's ingestion service (``mld rag run``).

:class:`RagService` receives EventBatches over the encrypted transport (PULL, the
detector's ``detector.events``), and DecisionBatches from the firewall agents (PULL,
``rag.blocks_endpoint``, channel ``blocks``: firewall/publish.py) into the blocks table,
ingests each into a :class:`rag.indexed_store.RagStore`
as it comes, saves the indexes every ``save_every_events`` events or ``save_every_s``
seconds and at exit, deletes what is past ``retention_days``/``max_events`` at start and
every ``prune_interval_s``, and (with control.endpoints) registers as ``rag/<id>`` with its
``events`` endpoint so detectors find it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from crypto_transport import Received, Receiver
from proto.events_pb2 import DecisionBatch, EventBatch
from rag.indexed_store import RagStore

__all__ = ["RagService"]


class RagService:
    """EventBatches from the detectors into the RAG store."""

    def __init__(
        self,
        rag: RagStore,
        receiver: Receiver[EventBatch],
        blocks: Receiver[DecisionBatch] | None = None,
    ) -> None:
        self.rag = rag
        self.receiver = receiver
        # The firewall agents' decisions (channel "blocks"), stored in the blocks table.
        self.blocks = blocks
        self.counters = {
            "batches": 0,
            "events": 0,
            "transactions": 0,
            "saves": 0,
            "decisions": 0,
        }
        # A batch of another detector received while gathering (stored at the next step).
        self._pending: Received[EventBatch] | None = None
        # Kept here: stats() is also read by the control thread, which may not use the
        # SQLite connection (it belongs to this thread).
        self._stored = rag.store.max_id()
        self._stop = threading.Event()
        self._unsaved_since: float | None = None
        # Retention is applied at the first step, then every rag.prune_interval_s.
        self._next_prune = 0.0
        self.counters["pruned"] = 0

    def request_stop(self) -> None:
        self._stop.set()

    def step(self, timeout_ms: int = 200) -> None:
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.rag.cfg.prune_interval_s
            self.counters["pruned"] += self.rag.prune()
        got, self._pending = self._pending, None
        if got is None:
            got = self.receiver.recv(timeout_ms=timeout_ms)
        if got is not None:
            detector = got.message.detector_id
            events = list(got.message.events)
            batches = 1
            # The batches already waiting, of the same detector, go in the same transaction
            # (up to rag.write_batch events): a detector sends ~100 events a batch, and a
            # transaction per batch paid its commit and the indexes' pages it dirtied for
            # 100 events instead of 2000. Whole batches only: a kill loses none in part.
            while len(events) < self.rag.cfg.write_batch:
                more = self.receiver.recv(timeout_ms=0)
                if more is None:
                    break
                if more.message.detector_id != detector:
                    self._pending = more  # in arrival order, after these
                    break
                events += more.message.events
                batches += 1
            ids = self.rag.ingest(events, detector, whole=True)
            if len(ids):
                self._stored = ids.stop - 1
            self.counters["batches"] += batches
            self.counters["events"] += len(events)
            self.counters["transactions"] += 1
            if self._unsaved_since is None:
                self._unsaved_since = time.monotonic()
        self.rag.swap_retrained()
        # Decisions are few (one batch per firewall turn that decided something): read
        # whatever is waiting, without waiting.
        while self.blocks is not None and (decided := self.blocks.recv(timeout_ms=0)):
            self.rag.store.add_blocks(list(decided.message.decisions))
            self.counters["decisions"] += len(decided.message.decisions)
        dirty = self.rag.text.dirty
        if dirty and (
            dirty >= self.rag.cfg.save_every_events
            or time.monotonic() - (self._unsaved_since or 0) >= self.rag.cfg.save_every_s
        ):
            self.save()

    def save(self) -> None:
        self.rag.save()
        self.counters["saves"] += 1
        self._unsaved_since = None

    def run(self, follow: Callable[[], None] = lambda: None) -> None:
        try:
            while not self._stop.is_set():
                self.step()
                follow()
        finally:
            if self.rag.text.dirty or self.rag.features.dirty:
                self.save()

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["stored"] = self._stored
        out["indexed"] = len(self.rag.text)
        out["index_bytes"] = self.rag.text.memory_bytes + self.rag.features.memory_bytes
        out["frames_missing"] = self.receiver.counters.missing
        out.update({f"rejected.{k}": v for k, v in sorted(self.receiver.counters.rejected.items())})
        if self.blocks is not None:
            out["blocks.frames_missing"] = self.blocks.counters.missing
            rejected = self.blocks.counters.rejected.items()
            out.update({f"blocks.rejected.{k}": v for k, v in sorted(rejected)})
        return out
