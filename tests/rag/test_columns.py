"""The facts' columns in memory (rag/columns.py) give SQL's own answers, and follow what
other processes add and delete (tests/rag/conftest's real scored events)."""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from proto.events_pb2 import ScoredEvent
from rag import columns as rag_columns
from rag.config import RagConfig
from rag.describe import embed_codes, embed_texts, text_codes
from rag.indexed_store import RagStore
from rag.question import parse
from rag.retrieve import facts_for, retrieve
from rag.store import EventStore, Filters
from tests.rag.conftest import NOW, SCANNED, SCANNER

QUESTIONS = [
    "which address scanned the server?",
    "how many scan alerts in the last hour?",
    f"what did {SCANNER} do?",
    f"what happened to {SCANNED}?",
    "show me reddit traffic",
    "what happened today?",
    "which hosts talked to port 443?",
    "show me https traffic since 08:00",
    "alerts between 09:30 and 10:15",
    "where did the rules and the models disagree today?",
    "how many divergent events in the last hour?",
    "top talkers today",
    "any brute force attempts against ssh?",
    "what did 192.0.2.99 do?",
    "blocked traffic",
    "tcp traffic before 09:00",
]


def _both(path: Path) -> tuple[EventStore, EventStore]:
    sql = EventStore(path, readonly=True)
    mem = EventStore(path, readonly=True)
    assert mem.use_fact_columns()
    return sql, mem


def _same_facts(sql: EventStore, mem: EventStore, filters: list[Filters]) -> None:
    for f in filters:
        assert mem.count(f) == sql.count(f), f
        assert mem.span(f) == sql.span(f), f
        for column in ("src", "dst", "family", "dst_port"):
            assert mem.group(column, f, limit=5) == sql.group(column, f, limit=5), (column, f)
        # The events listed, best first, and what the ranking reads of them.
        for limit in (1, 12, 5000):
            assert mem.rows(f, limit=limit) == sql.rows(f, limit=limit), (limit, f)
            assert mem.ranking(f, limit=limit) == sql.ranking(f, limit=limit), (limit, f)


def test_facts_from_the_columns_are_those_of_sql(small_store: RagStore) -> None:
    """Every question's facts and retrieved events, computed from the columns in memory
    and by SQL, are the same (counts, top values with their ties, spans, the events
    listed best first)."""
    sql, mem = _both(small_store.store.path)
    try:
        assert mem.columns is not None
        for q in QUESTIONS:
            parsed = parse(q, NOW)
            assert facts_for(mem, parsed) == facts_for(sql, parsed), q
            got = retrieve(mem, small_store.text, parsed, 12)
            want = retrieve(sql, small_store.text, parsed, 12)
            assert [r.id for r in got.rows] == [r.id for r in want.rows], q
        # Filters the parser may not produce together.
        _same_facts(
            sql,
            mem,
            [
                Filters(),
                Filters(min_label=2),
                Filters(min_label=3, families=("scan",)),
                Filters(ports=(80, 443), protos=(6,)),
                Filters(src=(SCANNER,), dst=(SCANNED,)),
                Filters(addrs=("192.0.2.99",)),
                Filters(fast_rules=("port_scan", "host_sweep")),
                Filters(divergent=True),
                Filters(ids=(1, 2, 3, 99_999)),
            ],
        )
        assert mem.columns.reads == 1 and len(mem.columns) == sql.count()
    finally:
        sql.close()
        mem.close()


def test_the_ranking_reads_the_stored_text_codes(small_store: RagStore) -> None:
    """Each row keeps its description's hashed tokens: the ranking embeds them without
    tokenizing the description, to the same vector."""
    ranked = small_store.store.ranking(Filters(), limit=50)
    assert len(ranked) == 50
    rows = {r.id: r for r in small_store.store.get([i for i, _, _, _ in ranked])}
    for i, _, codes, description in ranked:
        assert codes is not None and description is None
        stored = np.frombuffer(codes, dtype=np.uint16)
        assert np.array_equal(stored, text_codes([rows[i].description])[0])
        assert np.array_equal(embed_codes([stored]), embed_texts([rows[i].description]))


def test_ties_are_broken_by_value_like_sql(tmp_path: Path, small_store: RagStore) -> None:
    """Spoofed sources are seen once each: the top five are then the five smallest
    addresses as text ("10.0.0.12" before "10.0.0.3"), as SQL's ORDER BY gives them."""
    base = small_store.store.event(1)
    assert base is not None
    rag = RagStore(tmp_path / "events.sqlite", RagConfig())
    events = []
    for k in range(40):
        ev = ScoredEvent()
        ev.CopyFrom(base)
        ev.record.src_addr = ipaddress.ip_address(f"10.0.{k % 3}.{k}").packed
        ev.record.dst_port = 1000 + k % 7
        events.append(ev)
    rag.ingest(events, "det")
    sql, mem = _both(rag.store.path)
    try:
        # Few values against the dictionary are counted by sorting them, not bincount.
        _same_facts(sql, mem, [Filters(), Filters(ports=(1001, 1003)), Filters(ids=(2, 5, 9))])
        top = ["10.0.0.0", "10.0.0.12", "10.0.0.15", "10.0.0.18", "10.0.0.21"]
        assert mem.group("src", Filters()) == [(a, 1) for a in top]
    finally:
        sql.close()
        mem.close()
        rag.close()


def test_many_ties_are_narrowed_in_numpy_to_sqls_order(
    tmp_path: Path, small_store: RagStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of sources seen once each (a spoofed flood) tie at the last place of
    "top sources": they are narrowed by their values' first 16 bytes in NumPy before
    the few left are ordered in Python, to SQL's order: IPv4 and IPv6 sources, many
    sharing their first 8 and 16 bytes ("2001:db8:aaaa:bbbb::..."), some longer than
    16 bytes, and two seen twice (they come first)."""
    monkeypatch.setattr(rag_columns, "_FEW", 8)
    base = small_store.store.event(1)
    assert base is not None
    rng = np.random.default_rng(7)
    v4 = rng.choice(2**24, size=1500, replace=False)
    addrs = [f"10.{k >> 16}.{(k >> 8) & 255}.{k & 255}" for k in v4]
    addrs += [f"2001:db8:aaaa:bbbb::{k:x}" for k in rng.choice(2**16, size=600, replace=False)]
    addrs += [f"2001:db8::{k:x}:1" for k in rng.choice(2**16, size=300, replace=False) + 1]
    addrs += [f"10.10.10.{k}" for k in range(1, 60)]
    addrs += ["203.0.113.9", "203.0.113.9", "2001:db8:ffff::1", "2001:db8:ffff::1"]
    rag = RagStore(tmp_path / "events.sqlite", RagConfig())
    events = []
    for addr in addrs:
        ev = ScoredEvent()
        ev.CopyFrom(base)
        ev.record.src_addr = ipaddress.ip_address(addr).packed
        events.append(ev)
    rag.ingest(events, "det")
    sql, mem = _both(rag.store.path)
    try:
        for f in (Filters(), Filters(src=tuple(addrs[1500:1600]))):
            for limit in (1, 3, 5, 12):
                want = sql.group("src", f, limit=limit)
                assert mem.group("src", f, limit=limit) == want, (f, limit)
        top = [a for a, _ in mem.group("src", Filters(), limit=5)]
        assert top[:2] == ["2001:db8:ffff::1", "203.0.113.9"] and len(set(top)) == 5
        tied = np.arange(len(mem.columns.addrs.names), dtype=np.int64)  # type: ignore[union-attr]
        names = mem.columns.addrs.names  # type: ignore[union-attr]
        keys = mem.columns.addrs.keys  # type: ignore[union-attr]
        for need in (1, 2, 5, 40):
            got = rag_columns._smallest(tied, need, names.__getitem__, keys)
            assert [names[c] for c in got] == sorted(names)[:need]
    finally:
        sql.close()
        mem.close()
        rag.close()


def test_the_columns_follow_other_writers_adds_and_deletes(
    tmp_path: Path, small_store: RagStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader keeps its columns (as the console does) while a writer, through its own
    connection, adds events, replaces interim records of a flow and applies retention:
    after each, the reader's facts are SQL's again; a reader that fell further behind
    than the deleted log keeps reads the table again."""
    path = tmp_path / "events.sqlite"
    writer = RagStore(path, RagConfig(max_events=0))
    writer.open_indexes()
    stored = [i for chunk in small_store.store.scan(0) for i, _, _ in chunk]
    pool = [small_store.store.event(i) for i in stored]

    def copy(i: int, interim: bool = False, packets: int = 1) -> ScoredEvent:
        ev = ScoredEvent()
        ev.CopyFrom(pool[i])  # type: ignore[arg-type]
        ev.record.interim = interim
        ev.record.fwd.packets = packets
        return ev

    writer.ingest([copy(i) for i in range(200)], "det")
    sql, mem = _both(path)
    checks = [Filters(), Filters(min_label=2), Filters(src=(SCANNER,))]
    try:
        _same_facts(sql, mem, checks)
        # Added by the writer: read on the next question.
        writer.ingest([copy(i) for i in range(200, 400)], "det")
        _same_facts(sql, mem, checks)
        # An interim record replaced by the next record of its flow (a delete).
        writer.ingest([copy(400, interim=True, packets=5)], "det")
        _same_facts(sql, mem, checks)
        writer.ingest([copy(400, packets=9)], "det")
        assert len(writer.store.superseded) == 1
        _same_facts(sql, mem, checks)
        assert mem.count() == sql.count() == 401
        # Retention deletes the oldest.
        writer.cfg = dataclasses.replace(writer.cfg, max_events=150)
        assert writer.prune() == 251
        _same_facts(sql, mem, checks)
        assert mem.columns is not None and mem.columns.reads == 1
        # The log keeps only the newest entries: a reader further behind reads again.
        monkeypatch.setattr(rag_columns, "DELETED_LOG_KEEP", 10)
        monkeypatch.setattr("rag.store.DELETED_LOG_KEEP", 10)
        writer.ingest([copy(i) for i in range(500, 600)], "det")
        writer.cfg = dataclasses.replace(writer.cfg, max_events=60)
        assert writer.prune() == 190
        _same_facts(sql, mem, checks)
        assert mem.columns.reads == 2 and len(mem.columns) == 60
    finally:
        sql.close()
        mem.close()
        writer.close()


def test_a_store_without_the_deleted_log_answers_from_sql(
    tmp_path: Path, small_store: RagStore
) -> None:
    """A store written before the deleted log (no such table) is answered by SQL, until a
    writer opens it and adds the log."""
    path = tmp_path / "events.sqlite"
    rag = RagStore(path, RagConfig())
    rag.ingest([e for e in (small_store.store.event(i) for i in range(1, 30)) if e], "det")
    rag.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE deleted")
    old = EventStore(path, readonly=True)
    assert not old.use_fact_columns() and old.columns is None
    assert old.count() == 29
    old.close()
    EventStore(path).close()
    sql, mem = _both(path)
    _same_facts(sql, mem, [Filters(), Filters(min_label=2)])
    sql.close()
    mem.close()


def test_the_writers_own_columns_see_its_writes(tmp_path: Path, small_store: RagStore) -> None:
    """Columns on the writing connection itself (data_version does not change for a
    connection's own commits): its ingests and its retention show on the next question."""
    rag = RagStore(tmp_path / "events.sqlite", RagConfig(max_events=0))
    assert rag.store.use_fact_columns()
    pool = [e for e in (small_store.store.event(i) for i in range(1, 120)) if e]
    rag.ingest(pool[:50], "det")
    assert rag.store.count() == 50
    assert rag.store.count() == 50  # nothing changed: not read again
    rag.ingest(pool[50:], "det")
    assert rag.store.count() == len(pool)
    rag.cfg = dataclasses.replace(rag.cfg, max_events=30)
    rag.prune()
    assert rag.store.count() == 30
    sql = EventStore(rag.store.path, readonly=True)
    _same_facts(sql, rag.store, [Filters(), Filters(min_label=2)])
    sql.close()
    rag.close()
