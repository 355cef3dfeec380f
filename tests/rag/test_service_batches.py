"""The running store gathers the EventBatches already waiting into one transaction, over
real encrypted ZeroMQ sockets on loopback: fewer, larger transactions, whole batches
only (never split at rag.write_batch), in the order they arrived, one detector's
batches per transaction."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from crypto_transport import (
    ChannelEnd,
    KeyPair,
    Keyring,
    Sender,
    TransportConfig,
    open_receiver,
)
from proto.events_pb2 import EventBatch, ScoredEvent
from rag.config import RagConfig
from rag.indexed_store import RagStore
from rag.service import RagService
from tests.support import wait_for


def test_waiting_batches_share_a_transaction(small_store: RagStore, tmp_path: Path) -> None:
    pool = [ScoredEvent.FromString(b) for c in small_store.store.scan(0) for _, b, _ in c]
    rag_key, det = KeyPair.generate(), KeyPair.generate()
    ring = Keyring(rag_key, grace_s=60)
    ring.add_peer("det-1", det.public, roles=["detector"])
    settings = TransportConfig()
    receiver = open_receiver(
        ChannelEnd("tcp://127.0.0.1:0", "pull", "events", True),
        EventBatch,
        keyring=ring,
        settings=settings,
    )
    kr = Keyring(det, grace_s=60)
    kr.add_peer("rag", rag_key.public)
    sender = Sender(
        pattern="push",
        endpoint=receiver.bound_endpoint,
        channel="events",
        sender_id="det-1",
        keyring=kr,
        recipients=["rag"],
        settings=settings,
    )
    # 250 events a transaction at most: batches of 100 are gathered to 300 (whole).
    rag = RagStore(tmp_path / "events.sqlite", dataclasses.replace(RagConfig(), write_batch=250))
    try:
        service = RagService(rag, receiver)
        # One connection (arrival order is sending order): 12 batches of 100 of detector
        # det-a, 1 of det-b, 3 of det-a, sent at once.
        plan = ["det-a"] * 12 + ["det-b"] + ["det-a"] * 3
        for k, name in enumerate(plan):
            events = [pool[(k * 100 + i) % len(pool)] for i in range(100)]
            sender.send(EventBatch(detector_id=name, events=events))
        total = 100 * len(plan)

        def stored() -> int:
            service.step(timeout_ms=100)
            return int(service.counters["events"])

        wait_for(lambda: stored() == total, 30, "every batch stored")
        # The batches were waiting (sent at once, read as they are stored): det-a's first
        # 12 in transactions of 300 (3 batches, the first past 250), det-b's alone,
        # det-a's last 3 in one: 6 when all had arrived before the first was read, more
        # if some arrived later, never one per batch.
        assert service.counters["batches"] == len(plan)
        assert 6 <= service.counters["transactions"] < len(plan)
        con = sqlite3.connect(tmp_path / "events.sqlite")
        try:
            rows = con.execute("SELECT detector, stored_ts FROM events ORDER BY id").fetchall()
        finally:
            con.close()
        # In arrival order: det-b's batch between det-a's 12th and 13th.
        assert [d for d, _ in rows] == ["det-a"] * 1200 + ["det-b"] * 100 + ["det-a"] * 300
        # Whole batches per transaction (a transaction's rows share their stored time),
        # one detector in each.
        per_tx: dict[float, set[str]] = {}
        sizes: dict[float, int] = {}
        for d, ts in rows:
            per_tx.setdefault(ts, set()).add(d)
            sizes[ts] = sizes.get(ts, 0) + 1
        assert len(sizes) == service.counters["transactions"]
        assert all(n % 100 == 0 and n <= 300 for n in sizes.values()), sizes
        assert all(len(d) == 1 for d in per_tx.values())
    finally:
        sender.close()
        receiver.close()
        rag.close()
