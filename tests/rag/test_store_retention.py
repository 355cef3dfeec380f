"""Retention of the RAG store: rag.retention_days and rag.max_events delete old events
with their vectors, and the running store (RagService) applies them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import zmq

from crypto_transport import ChannelEnd, KeyPair, Keyring, TransportConfig, open_receiver
from proto.events_pb2 import EventBatch, ScoredEvent
from rag.config import RagConfig
from rag.indexed_store import RagStore
from rag.service import RagService
from rag.store import Filters
from tests.rag.conftest import build_store

DAY = 86400.0


def _index_ids(index: Any) -> set[int]:
    """The ids a flat (IndexIDMap2) index holds."""
    return set(faiss.vector_to_array(faiss.downcast_index(index).id_map).tolist())


def _db_ids(rag: RagStore) -> set[int]:
    return {i for chunk in rag.store.scan(0) for i, _, _ in chunk}


def test_max_events_deletes_the_oldest_with_their_vectors(tmp_path: Path) -> None:
    """Before, nothing ever deleted an event: the store and its indexes grew for ever."""
    path = tmp_path / "events.sqlite"
    rag = build_store(path)
    try:
        total = rag.store.count()
        first, newest = min(_db_ids(rag)), rag.store.max_id()
        keep = total // 3
        rag.cfg = dataclasses.replace(rag.cfg, retention_days=0, max_events=keep)
        assert rag.prune() == total - keep
        ids = _db_ids(rag)
        assert len(ids) == keep and max(ids) == newest and first not in ids
        assert min(ids) == newest - keep + 1  # the newest ones stay
        assert _index_ids(rag.text.index) == ids == _index_ids(rag.features.index)
        assert rag.prune() == 0
    finally:
        rag.close()
    # The saved indexes match the database: nothing to add or drop at the next start.
    again = RagStore(path, RagConfig())
    try:
        assert again.open_indexes() == 0
        assert _index_ids(again.text.index) == _db_ids(again)
        # A search finds only events that are still there.
        hits = again.text.search(np.ones(again.text.dim, dtype=np.float32), 50)
        assert hits and {i for i, _ in hits} <= _db_ids(again)
    finally:
        again.close()


def test_retention_days_deletes_events_stored_longer_ago(tmp_path: Path) -> None:
    rag = build_store(tmp_path / "events.sqlite")
    try:
        total = rag.store.count()
        rag.cfg = dataclasses.replace(rag.cfg, retention_days=30, max_events=0)
        assert rag.prune(now=time.time() + 29 * DAY) == 0
        assert rag.prune(now=time.time() + 31 * DAY) == total
        assert rag.store.count(Filters()) == 0
        assert len(rag.text) == 0 and len(rag.features) == 0
    finally:
        rag.close()


def test_zero_keeps_everything(tmp_path: Path) -> None:
    rag = build_store(tmp_path / "events.sqlite")
    try:
        total = rag.store.count()
        rag.cfg = dataclasses.replace(rag.cfg, retention_days=0, max_events=0)
        assert rag.prune(now=time.time() + 1000 * DAY) == 0
        assert rag.store.count() == total
    finally:
        rag.close()


def test_the_running_store_applies_retention(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    build_store(path).close()
    rag = RagStore(path, RagConfig(max_events=10, prune_interval_s=3600))
    rag.open_indexes()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ring = Keyring(KeyPair.generate(), grace_s=60)
    receiver = open_receiver(
        ChannelEnd(f"ipc://{tmp_path}/events.sock", "pull", "events"),
        EventBatch,
        keyring=ring,
        settings=TransportConfig(),
        context=ctx,
    )
    try:
        service = RagService(rag, receiver)
        service.step(timeout_ms=0)
        assert rag.store.count() == 10
        assert service.stats()["pruned"] > 0
        pruned = service.stats()["pruned"]
        service.step(timeout_ms=0)  # not again within prune_interval_s
        assert service.stats()["pruned"] == pruned
    finally:
        receiver.close()
        rag.close()
        ctx.destroy(linger=0)


def test_a_pass_reads_only_what_it_deletes(tmp_path: Path) -> None:
    """Before, every retention pass read the whole table, twice, with nothing to delete:
    a scan for the stored time (no index on it) and one stepping over the newest
    ``max_events`` rows to find the oldest past them. At a million events that is ~1.2
    GB of rows every ``rag.prune_interval_s``, and it filled the writer's page cache
    (which the soak counted as memory). Counted here as SQLite's virtual-machine
    instructions (a progress handler every 10), which grow with the rows a statement
    steps through: 35k for 4.4k rows before, on a pass with nothing to delete; none now
    (fewer than 10), and ~110 for each event deleted."""
    rag = build_store(tmp_path / "events.sqlite")
    db = rag.store._db
    steps = [0]

    def count() -> int:
        steps[0] += 10
        return 0

    try:
        events = [ScoredEvent.FromString(b) for c in rag.store.scan(0) for _, b, _ in c]
        for _ in range(3):  # a larger table (final records: stored again, not replaced)
            rag.store.add(events, "det-copy", ["copy"] * len(events))
        total = rag.store.count()
        assert total > 4000
        db.set_progress_handler(count, 10)
        assert rag.store.prune(time.time() - 30 * DAY, total) == []
        assert steps[0] < total / 4, f"{steps[0]} SQLite instructions for nothing to delete"
        steps[0] = 0
        newest = rag.store.max_id()
        gone = rag.store.prune(time.time() - 30 * DAY, total - 10)
        assert steps[0] < total / 2, f"{steps[0]} SQLite instructions to delete 10 events"
        db.set_progress_handler(None, 0)
        ids = _db_ids(rag)
        assert len(gone) == 10 and min(ids) > max(gone) and newest in ids
        assert len(ids) == total - 10
        # And by age: the 10 stored first (their stored time set back 31 days).
        first = sorted(ids)[:10]
        marks = ",".join("?" * len(first))
        with db:
            db.execute(
                f"UPDATE events SET stored_ts = stored_ts - ? WHERE id IN ({marks})",
                [31 * DAY, *first],
            )
        steps[0] = 0
        db.set_progress_handler(count, 10)
        assert rag.store.prune(time.time() - 30 * DAY, 0) == first
        assert steps[0] < total / 2, f"{steps[0]} SQLite instructions to delete 10 old events"
    finally:
        db.set_progress_handler(None, 0)
        rag.close()
