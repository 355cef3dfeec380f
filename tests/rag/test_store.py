"""The event store, the indexes and retrieval on real scored events (tests/rag/conftest)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from proto.events_pb2 import ScoredEvent
from rag.answer import Answerer, draft
from rag.config import RagConfig
from rag.indexed_store import RagStore, _Retrain
from rag.question import parse
from rag.retrieve import retrieve
from rag.store import EventStore, Filters
from rag.vectors import VectorIndex
from tests.rag.conftest import (
    NOW,
    SCAN_AT,
    SCANNED,
    SCANNER,
    build_store,
    ids_held,
    sql_answers,
    stored_events,
)


def test_every_event_is_stored_with_every_field(small_store: RagStore) -> None:
    store = small_store.store
    total = store.count()
    assert total > 1000
    assert len(small_store.text) == total == len(small_store.features)
    # The blob is the ScoredEvent as received: every field, including the record's.
    ev = store.event(1)
    assert isinstance(ev, ScoredEvent) and ev.record.fwd.packets > 0 and ev.verdict.verdict_id
    row = store.get([1])[0]
    assert row.src and row.ts > 0 and row.description
    db = sqlite3.connect(store.path)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    db.close()
    assert {"events_ts", "events_family", "events_label", "events_verdict"} <= indexes
    # None keyed by address or port: each row went into those at a random place.
    assert not indexes & {"events_src", "events_dst", "events_src_port", "events_dst_port"}
    # A writer checkpoints the WAL every 16k pages, not SQLite's 1000 (rag/store.py).
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 16384


def test_filters_in_sql(small_store: RagStore) -> None:
    store = small_store.store
    scan = Filters(src=(SCANNER,), families=("scan",), min_label=2)
    n = store.count(scan)
    assert n > 900  # masscan: 1,003 flows, nearly all alerts
    assert store.group("dst", scan)[0] == (SCANNED, n)
    assert store.count(Filters(since_ts=SCAN_AT - 1, addrs=(SCANNER,))) == store.count(
        Filters(addrs=(SCANNER,))
    )
    assert store.count(Filters(until_ts=SCAN_AT - 60, addrs=(SCANNER,))) == 0
    assert store.count(Filters(addrs=("192.0.2.99",))) == 0


def test_retrieval_answers_who_count_and_about_from_sql(small_store: RagStore) -> None:
    answerer = Answerer(RagConfig(), "none")
    who = retrieve(
        small_store.store, small_store.text, parse("which address scanned the server?", NOW), 12
    )
    assert who.facts.sources[0][0] == SCANNER
    a = answerer.answer(who)
    assert SCANNER in a.reply and a.cited and not a.model
    cited = small_store.store.get(a.cited)
    assert all(r.src == SCANNER and r.family == "scan" for r in cited)

    count = retrieve(
        small_store.store, small_store.text, parse("how many scan alerts today?", NOW), 12
    )
    truth = small_store.store.count(Filters(families=("scan",), min_label=2))
    assert count.facts.matching == truth and str(truth) in draft(count)

    about = retrieve(small_store.store, small_store.text, parse(f"what did {SCANNER} do?", NOW), 12)
    assert about.facts.as_source == small_store.store.count(Filters(src=(SCANNER,)))
    assert about.facts.as_destination == 0
    nothing = retrieve(
        small_store.store, small_store.text, parse("what did 192.0.2.99 do?", NOW), 12
    )
    assert nothing.rows == [] and "No stored event" in draft(nothing)


def test_text_search_finds_events_by_their_words(small_store: RagStore) -> None:
    r = retrieve(small_store.store, small_store.text, parse("https", NOW), 5)
    assert r.rows and all(443 in (row.src_port, row.dst_port) for row in r.rows)


def test_killed_between_batches_nothing_is_lost_and_reindex_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    rag = build_store(path, RagConfig(ivf_threshold=500))
    total = rag.store.count()
    assert rag.text.kind == "ivf"  # past the threshold: rebuilt as IVF,SQ8
    # Events written after the last save (as if the process died before saving): the
    # indexes on disk miss them; the next start adds them from SQLite.
    stored = [i for chunk in rag.store.scan(0) for i, _, _ in chunk]  # ids have gaps
    extra = [rag.store.event(i) for i in stored[:50]]
    for e in extra:  # other flows: a record of a stored flow would replace its row
        assert e is not None
        e.record.flow_id ^= 1 << 63
    rag.store.add([e for e in extra if e], "det-late", ["late event"] * 50)
    rag.close()
    again = RagStore(path, RagConfig(ivf_threshold=500))
    assert again.open_indexes() == 50
    assert len(again.text) == total + 50 == again.store.count()
    # A lost or damaged index file is rebuilt from the database.
    again.close()
    path.with_suffix(".text.faiss").write_bytes(b"not an index")
    third = RagStore(path, RagConfig(ivf_threshold=500))
    assert third.open_indexes() == total + 50
    assert third.reindex() == total + 50 and len(third.features) == total + 50
    third.close()


def test_the_store_keeps_the_latest_record_of_a_flow(small_store: RagStore, tmp_path: Path) -> None:
    """Issue 18: a long flow comes as interim records, then its final record (one flow_id).
    The store keeps one row per flow, the latest, and the indexes one vector per row."""
    rag = RagStore(tmp_path / "events.sqlite", RagConfig())
    rag.open_indexes()
    stored = [i for chunk in small_store.store.scan(0) for i, _, _ in chunk][:3]
    base = [small_store.store.event(i) for i in stored]
    assert all(e is not None for e in base)

    def record_of(i: int, packets: int, interim: bool, sensor: str = "") -> ScoredEvent:
        ev = ScoredEvent()
        ev.CopyFrom(base[i])  # type: ignore[arg-type]
        ev.record.interim = interim
        ev.record.fwd.packets = packets
        if sensor:
            ev.sensor_id = sensor
        return ev

    flow = base[0].record.flow_id  # type: ignore[union-attr]
    first = rag.ingest([record_of(0, 10, True), record_of(1, 5, False)], "det")
    assert rag.store.count() == 2
    # Two more records of flow 0 in one batch (an interim one, then the final one).
    rag.ingest([record_of(0, 20, True), record_of(2, 7, False), record_of(0, 30, False)], "det")
    assert rag.store.count() == 3 == len(rag.text) == len(rag.features)
    # Replaced: the first interim record (stored before) and the one of this batch.
    assert rag.store.superseded == [first.start, first.stop]
    rows = [r for r in rag.store.rows(Filters(), limit=10) if r.id >= first.stop]
    kept = [rag.store.event(r.id) for r in rows]
    ours = [e for e in kept if e is not None and e.record.flow_id == flow]
    assert len(ours) == 1 and ours[0].record.fwd.packets == 30 and not ours[0].record.interim
    # The same flow id from another sensor is another flow.
    rag.ingest([record_of(0, 40, True, sensor="sensor-other")], "det")
    assert rag.store.count() == 4
    rag.save()
    rag.close()
    again = RagStore(tmp_path / "events.sqlite", RagConfig())
    assert again.open_indexes() == 0 and len(again.text) == 4
    assert again.reindex() == 4
    again.close()


def test_interim_rows_stored_before_the_interim_column_are_replaced(
    small_store: RagStore, tmp_path: Path
) -> None:
    """Rows written before the interim column (NULL there, ids below interim_from_id) are
    still replaced by the next record of their flow: their blobs say they are interim."""
    path = tmp_path / "events.sqlite"
    rag = RagStore(path, RagConfig())
    base = small_store.store.event(1)
    assert base is not None
    interim, final, other = ScoredEvent(), ScoredEvent(), ScoredEvent()
    for ev in (interim, final, other):
        ev.CopyFrom(base)
    interim.record.interim = True
    other.record.flow_id = base.record.flow_id + 1
    first = rag.ingest([interim, other], "det")
    rag.close()
    with sqlite3.connect(path) as db:  # as an older version wrote them
        db.execute("UPDATE events SET interim = NULL")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'interim_from_id'")
    rag = RagStore(path, RagConfig())
    rag.ingest([final], "det")
    assert rag.store.superseded == [first.start]
    assert rag.store.count() == 2
    rag.close()


def test_an_ivf_index_is_trained_again_as_it_grows(tmp_path: Path) -> None:
    rag = build_store(tmp_path / "events.sqlite", RagConfig(ivf_threshold=200))
    try:
        # Trained again in the background: wait for it (ingest did not).
        assert rag.wait_retrained(120)
        total = rag.store.count()
        # IVF at 200 events, trained again (from the database) at 800.
        assert rag.text.is_ivf and 800 <= rag.text.trained_on <= total
        assert len(rag.text) == len(rag.features) == total
        r = retrieve(rag.store, rag.text, parse("https", NOW), 5)
        assert r.rows and all(443 in (row.src_port, row.dst_port) for row in r.rows)
    finally:
        rag.close()


def test_the_number_of_lists_stops_at_max_lists(tmp_path: Path) -> None:
    """Every vector added is compared with every list's centroid: past ``max_lists`` an
    index gets no more lists (the text index 2048, the features index 1024), also when
    it is trained again in the background."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((4000, 8)).astype(np.float32)
    ids = np.arange(1, 4001, dtype=np.int64)
    for cap, lists in ((16, 16), (4096, 100)):  # n / 40 = 100 lists without the cap
        index = VectorIndex(
            tmp_path / f"{cap}.faiss", 8, inner_product=False, ivf_threshold=1000, max_lists=cap
        )
        index.build(ids, vectors)
        assert faiss.extract_index_ivf(index.index).nlist == lists
    rag = RagStore(tmp_path / "events.sqlite", RagConfig())
    try:
        assert (rag.text.max_lists, rag.features.max_lists) == (2048, 1024)
        job = _Retrain(rag, 0)
        assert job._like(rag.text).max_lists == 2048
        assert job._like(rag.features).max_lists == 1024
    finally:
        rag.close()


def _writer(path: str, name: str, blobs: list[bytes], ready: Any, out: Any) -> None:
    """One writing process: ingest ``blobs`` in batches of 10 as detector ``name``, a
    batch every 10 ms or so (as batches arrive), starting when the other one is ready."""
    rag = RagStore(Path(path), RagConfig())
    rag.open_indexes()
    ready.wait(60)
    ids: list[int] = []
    for start in range(0, len(blobs), 10):
        batch = [ScoredEvent.FromString(b) for b in blobs[start : start + 10]]
        ids += list(rag.ingest(batch, name))
        time.sleep(0.01)
    rag.save()
    rag.close()
    out.put((name, ids))


def test_two_writing_processes_share_one_store_and_its_indexes(
    small_store: RagStore, tmp_path: Path
) -> None:
    """``mld watch`` beside ``mld rag run`` on one store (two real processes writing at
    once): the ids each is told are its own rows, and whichever saves last, the saved
    indexes hold every event of both once, with nothing for the next start to add."""
    path = tmp_path / "events.sqlite"
    blobs = [b for _, b, _ in next(small_store.store.scan(0, batch=400))]
    assert len(blobs) == 400
    RagStore(path, RagConfig()).close()  # created before the writers race to create it
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding FAISS/SQLite
    ready, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(str(path), name, part, ready, out))
        for name, part in (("det-a", blobs[:200]), ("det-b", blobs[200:]))
    ]
    for p in procs:
        p.start()
    try:
        told = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT id, detector FROM events ORDER BY id").fetchall()
    db.close()
    assert len(rows) == 400
    for name in ("det-a", "det-b"):
        assert told[name] == [i for i, d in rows if d == name]
    # The batches interleaved: each writer indexed the other's rows before its own.
    assert sum(a[1] != b[1] for a, b in itertools.pairwise(rows)) >= 4, rows
    reader = RagStore(path, RagConfig(), readonly=True)
    try:
        assert reader.open_indexes() == 0
        held = faiss.vector_to_array(faiss.downcast_index(reader.text.index).id_map)
        assert sorted(held.tolist()) == [i for i, _ in rows]
        assert len(reader.features) == 400
    finally:
        reader.close()


def test_training_again_runs_beside_ingest(tmp_path: Path, monkeypatch: Any) -> None:
    """Before, an index that had grown four times past its training was trained again
    inside ``ingest``: every vector read back, described and embedded again, then the IVF
    trained, while no batch was stored (seconds at 100k events, a minute at 1M). Now it is
    trained in a thread: here that thread is held at its start until the test lets it go,
    and ingest and retention go on meanwhile; the indexes swapped in then hold exactly
    the events in the database (those ingested meanwhile added, those pruned dropped)."""
    import rag.indexed_store as indexed_store

    gate = threading.Event()
    started = threading.Event()
    run = indexed_store._Retrain.run

    def held(self: Any) -> None:
        started.set()
        assert gate.wait(120), "the test never let the training go"
        run(self)

    monkeypatch.setattr(indexed_store._Retrain, "run", held)
    events = stored_events(tmp_path / "source.sqlite")
    rag = RagStore(tmp_path / "events.sqlite", RagConfig(ivf_threshold=200))
    rag.open_indexes()
    try:
        # Batches of 50 as they arrive: IVF at 200 events, trained again at 800.
        batches = [events[n : n + 50] for n in range(0, len(events), 50)]
        while not rag.retraining:
            rag.ingest(batches.pop(0), "det-test")
        assert started.wait(60) and rag.store.count() == 800
        old_text = rag.text
        # Ingest goes on while the training is held: these return without it.
        for batch in batches:
            rag.ingest(batch, "det-late")
        assert rag.store.count() == len(events)
        assert rag.retraining and rag.text is old_text and not gate.is_set()
        # Retention meanwhile: the oldest 100 go, from the current indexes and (at the
        # swap) from the new ones, which the thread builds from the rows before it.
        keep = rag.store.count() - 100
        rag.cfg = dataclasses.replace(rag.cfg, retention_days=0, max_events=keep)
        assert rag.prune() == 100
        gate.set()
        job = rag._retrain
        assert job is not None and job.done.wait(120)
        assert rag.swap_retrained()  # what the running store does between batches
        assert not rag.retraining and rag.text is not old_text and rag.text.is_ivf
        db_ids = sorted(i for chunk in rag.store.scan(0) for i, _, _ in chunk)
        assert len(db_ids) == keep
        assert sorted(ids_held(rag.text.index)) == db_ids == sorted(ids_held(rag.features.index))
        # Trained on the snapshot's 800 less the 100 pruned before the thread read them.
        assert rag.text.trained_on == 700
        r = retrieve(rag.store, rag.text, parse("https", NOW), 5)
        assert r.rows and all(443 in (row.src_port, row.dst_port) for row in r.rows)
    finally:
        gate.set()
        rag.close()


def test_a_reader_maps_the_saved_indexes(tmp_path: Path) -> None:
    """A reader (``mld rag ask``, the console) memory-maps the saved indexes instead of
    reading them into its heap, and finds the same events; one that has events to add
    (a writer has not saved them yet) reads them into memory and adds them."""
    path = tmp_path / "events.sqlite"
    for threshold in (500, 20000):  # IVF,SQ8 and flat
        cfg = RagConfig(ivf_threshold=threshold)
        writer = build_store(path, cfg) if not path.exists() else RagStore(path, cfg)
        writer.open_indexes()
        writer.reindex()  # saved, as the running store saves them
        query = parse("https", NOW)
        want = [r.id for r in retrieve(writer.store, writer.text, query, 5).rows]
        reader = RagStore(path, cfg, readonly=True)
        try:
            assert reader.open_indexes() == 0
            assert reader.text.mapped and reader.features.mapped
            assert reader.text.kind == ("ivf" if threshold == 500 else "flat")
            assert [r.id for r in retrieve(reader.store, reader.text, query, 5).rows] == want
        finally:
            reader.close()
        # Events the saved indexes lack: the reader loads them unmapped and adds them.
        late = [e for e in (writer.store.event(i) for i in range(1, 21)) if e is not None]
        writer.store.add(late, "det-late", ["late event"] * len(late))
        reader = RagStore(path, cfg, readonly=True)
        try:
            assert reader.open_indexes() == len(late)
            assert not reader.text.mapped and len(reader.text) == reader.store.count()
        finally:
            reader.close()
        writer.close()


def test_save_completes_while_another_writer_holds_the_database(
    small_store: RagStore, tmp_path: Path
) -> None:
    """``PRAGMA optimize`` at the end of save() failed once with "database is locked"
    (``mld watch`` writing beside ``mld rag run`` on a loaded machine) and crashed the
    service. Here a second connection really holds SQLite's write lock (BEGIN IMMEDIATE)
    from just after save() recorded its meta until save() returns: the optimisation is
    skipped, not an error, and the store keeps working once the lock is let go. The
    lock is taken at that point through a wrapper of set_meta, the store's last write
    in save(), since only there can it be held without also blocking that write."""
    path = tmp_path / "events.sqlite"
    blobs = [b for _, b, _ in next(small_store.store.scan(0, batch=300))]
    rag = RagStore(path, RagConfig())
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        rag.open_indexes()
        rag.ingest([ScoredEvent.FromString(b) for b in blobs[:200]], "det-a")
        # This connection queried the indexes and the table grew from empty: there are
        # statistics for PRAGMA optimize to gather (an ANALYZE, which writes).
        rag.store.count()
        set_meta = rag.store.set_meta
        held = threading.Event()

        def then_lock(key: str, value: str) -> None:
            set_meta(key, value)
            other.execute("BEGIN IMMEDIATE")
            held.set()

        rag.store.set_meta = then_lock  # type: ignore[method-assign]
        started = time.monotonic()
        rag.save()
        took = time.monotonic() - started
        assert held.is_set()
        rag.store.set_meta = set_meta  # type: ignore[method-assign]
        assert took < 4.0, f"save() waited {took:.1f} s for an optional optimisation"
        other.execute("ROLLBACK")
        assert rag.store.meta("indexed_upto") == str(rag.store.max_id())
        rag.ingest([ScoredEvent.FromString(b) for b in blobs[200:]], "det-a")
        rag.save()
        assert rag.store.count() == 300 == len(rag.text)
    finally:
        other.close()
        rag.close()


def test_optimize_really_writes_here(small_store: RagStore, tmp_path: Path) -> None:
    """The test above only means something if ``PRAGMA optimize`` wants the write lock
    in that state: without the lock held, the same steps leave planner statistics in
    sqlite_stat1 (an ANALYZE ran)."""
    path = tmp_path / "events.sqlite"
    blobs = [b for _, b, _ in next(small_store.store.scan(0, batch=200))]
    rag = RagStore(path, RagConfig())
    try:
        rag.open_indexes()
        rag.ingest([ScoredEvent.FromString(b) for b in blobs], "det-a")
        rag.store.count()
        rag.save()
    finally:
        rag.close()
    db = sqlite3.connect(path)
    try:
        stats = db.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0]
    finally:
        db.close()
    assert stats > 0


def _sqlite_memory_used() -> int:
    """Bytes SQLite has allocated in this process, every connection (its own counter,
    ``sqlite3_memory_used``, reached through the library Python's sqlite3 loaded)."""
    import _sqlite3
    import ctypes

    fn = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    fn.restype = ctypes.c_int64
    return int(fn())


def test_save_gives_back_the_writers_page_cache(small_store: RagStore, tmp_path: Path) -> None:
    """The lab's 60-minute soak measured the RAG service growing 66 MB/h besides its
    vectors: the writer's SQLite page cache filling up to cache_size (64 MB) as the
    database grew. A save now empties it, and so does a retention pass (its scan filled
    it again every prune): what they made SQLite allocate is released (the connection,
    its schema and statements stay)."""
    path = tmp_path / "events.sqlite"
    blobs = [b for _, b, _ in next(small_store.store.scan(0, batch=1500))]
    rag = RagStore(path, RagConfig())
    try:
        rag.open_indexes()
        rag.save()
        base = _sqlite_memory_used()
        for start in range(0, len(blobs), 100):
            rag.ingest([ScoredEvent.FromString(b) for b in blobs[start : start + 100]], "det-a")
        grown = _sqlite_memory_used() - base
        assert grown > 1_000_000, grown  # the cache held the pages ingest wrote
        rag.save()
        left = _sqlite_memory_used() - base
        assert left < grown / 5, (grown, left)
        # Retention with nothing to delete (no save follows) reads every row to find out:
        # that too is given back.
        assert rag.prune() == 0
        left = _sqlite_memory_used() - base
        assert left < grown / 5, (grown, left)
        assert rag.store.count() == len(blobs)
    finally:
        rag.close()


_ADDRESS_FILTERS = [
    Filters(addrs=(SCANNER,)),
    Filters(src=(SCANNER,), dst=(SCANNED,)),
    Filters(ports=(80, 443)),
    Filters(addrs=(SCANNER,), since_ts=SCAN_AT - 60, min_label=2),
    Filters(dst=(SCANNED,), families=("scan",), divergent=True),
    Filters(addrs=("192.0.2.99",)),
]
_OLD_INDEXES = (
    "CREATE INDEX events_src ON events (src, ts)",
    "CREATE INDEX events_dst ON events (dst, ts)",
    "CREATE INDEX events_dst_port ON events (dst_port, ts)",
    "CREATE INDEX events_src_port ON events (src_port, ts)",
)


def _sql_answers(store: Any) -> list[object]:
    """What SQL says for filters on addresses and ports (a store without columns)."""
    return sql_answers(store, _ADDRESS_FILTERS)


def test_sql_filters_addresses_and_ports_in_the_label_index(small_store: RagStore) -> None:
    """Without indexes keyed by address or port, SQL (a one-shot `mld rag ask`) reads
    the label index for such filters, never every row of the table (~1 kB each)."""
    db = sqlite3.connect(f"file:{small_store.store.path}?mode=ro", uri=True)
    store = small_store.store
    try:
        for f in _ADDRESS_FILTERS:
            where, params = f.where()
            hint = store._index_hint(f)
            assert hint == " INDEXED BY events_label", f
            for sql in (
                f"SELECT COUNT(*) FROM events{hint} WHERE {where}",
                f"SELECT id FROM events{hint} WHERE {where} ORDER BY final_score DESC LIMIT 5",
            ):
                plan = " | ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                assert "events_label" in plan and not re.search("SCAN events(?! USING)", plan), plan
        # Rows asked for by id are read by id.
        assert store._index_hint(Filters(ids=(1, 2), addrs=(SCANNER,))) == ""
    finally:
        db.close()


def test_a_store_written_before_drops_its_address_indexes_and_answers_the_same(
    tmp_path: Path, small_store: RagStore
) -> None:
    """A store made before this change (events_src, events_dst, events_src_port,
    events_dst_port, a label index without src_port): read-only it keeps answering
    through its own indexes; the first writer that opens it drops the four and widens
    the label index, and SQL then gives the same answers through the label index."""
    path = tmp_path / "events.sqlite"
    with sqlite3.connect(small_store.store.path) as src, sqlite3.connect(path) as db:
        src.backup(db)
        db.execute("DROP INDEX events_label")
        db.execute(
            "CREATE INDEX events_label ON events (label, ts, family, src, dst, dst_port, last_ts)"
        )
        for sql in _OLD_INDEXES:
            db.execute(sql)
    old = EventStore(path, readonly=True)
    assert old._index_hint(Filters(addrs=(SCANNER,))) == ""  # its own indexes serve
    before = _sql_answers(old)
    old.close()
    EventStore(path).close()  # a writer opens it
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        label = [r[2] for r in db.execute("PRAGMA index_info(events_label)")]
    assert not names & {"events_src", "events_dst", "events_src_port", "events_dst_port"}
    assert label[-1] == "src_port"
    after = EventStore(path, readonly=True)
    assert after._index_hint(Filters(addrs=(SCANNER,))) == " INDEXED BY events_label"
    assert _sql_answers(after) == before
    assert any(before[i] for i in range(0, len(before), 8))  # something matched
    after.close()


def test_sql_readers_see_other_writers_rows_of_an_address(
    tmp_path: Path, small_store: RagStore
) -> None:
    """A SQL reader finds a question's address once (a scan of events_label into a
    temporary table of ids) and reuses it for the question's other queries; a commit by
    another process, or by the reader's own connection, makes it look again."""
    path = tmp_path / "events.sqlite"
    pool = [e for e in (small_store.store.event(i) for i in range(1, 400)) if e]
    scanner = [e for e in pool if e.record.src_addr == bytes(map(int, SCANNER.split(".")))]
    assert len(scanner) > 20
    rag = RagStore(path, RagConfig())
    rag.ingest(scanner[:10], "det")
    reader = EventStore(path, readonly=True)
    mine = Filters(addrs=(SCANNER,))
    assert reader.count(mine) == 10
    assert reader.count(dataclasses.replace(mine, addrs=(), src=(SCANNER,))) == 10
    assert reader.count(dataclasses.replace(mine, addrs=(), dst=(SCANNER,))) == 0
    assert list(reader._matches) == [((SCANNER,), (), (), ())]  # one scan served the three
    for e in scanner[10:20]:
        e.record.flow_id ^= 1 << 62  # other flows: not replacements of the first ten
    rag.ingest(scanner[10:20], "det")
    assert reader.count(mine) == 20
    assert [r.src for r in reader.rows(mine, limit=50)] == [SCANNER] * 20
    assert reader.group("src", mine) == [(SCANNER, 20)]
    reader.close()
    rag.close()


def test_a_failed_training_keeps_the_indexes_and_waits_before_trying_again(
    tmp_path: Path, caplog: Any
) -> None:
    """The training process cannot save its new index (a directory is where it would
    write): the store says so, keeps serving from its current indexes, keeps ingesting,
    and does not start another training at every batch (each one a process reading the
    whole table) but only after ``_RETRY_S``."""
    import rag.indexed_store as indexed_store

    events = stored_events(tmp_path / "source.sqlite")
    rag = RagStore(tmp_path / "events.sqlite", RagConfig(ivf_threshold=200))
    rag.open_indexes()
    blocker = indexed_store._new_index_file(rag.text, os.getpid())
    blocker.mkdir()
    (blocker / "keep").write_text("")  # not removable as a file
    try:
        batches = [events[n : n + 50] for n in range(0, len(events), 50)]
        while not rag.retraining:
            rag.ingest(batches.pop(0), "det-test")
        old_text = rag.text
        with caplog.at_level(logging.WARNING, logger="rag.indexed_store"):
            assert rag.wait_retrained(120)
        assert "training the indexes again failed" in caplog.text
        assert rag.text is old_text and len(rag.text) == rag.store.count()
        for batch in batches:  # still due (4x past), but not tried again yet
            rag.ingest(batch, "det-late")
            assert not rag.retraining
        assert len(rag.text) == len(rag.features) == rag.store.count() == len(events)
        r = retrieve(rag.store, rag.text, parse("https", NOW), 5)
        assert r.rows and all(443 in (row.src_port, row.dst_port) for row in r.rows)
    finally:
        rag.close()
    assert blocker.is_dir()  # the store removes its own files only
