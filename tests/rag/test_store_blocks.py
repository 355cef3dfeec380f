"""SQL readers find a question's addresses and ports through event_blocks, the writer's
summary of which addresses and ports each block of consecutive ids holds (rag/store.py;
issue 21 item 6, sixth pass): the same answers as a scan of the label index, reading only
the blocks that may hold them. Real stores of the scored events of tests/rag/conftest."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rag.store as store_mod
from proto.events_pb2 import ScoredEvent
from rag.indexed_store import RagStore
from rag.store import EventStore, Filters
from tests.rag.conftest import SCAN_AT, SCANNED, SCANNER, sql_answers

BLOCK = 16  # ids per block in these stores (2048 in a real one): ~1,100 events

FILTERS = [
    Filters(addrs=(SCANNER,)),
    Filters(src=(SCANNER,)),
    Filters(dst=(SCANNER,)),
    Filters(src=(SCANNER,), dst=(SCANNED,)),
    Filters(ports=(80, 443)),
    Filters(ports=(22,)),
    Filters(addrs=(SCANNER,), ports=(443,)),
    Filters(addrs=(SCANNER,), since_ts=SCAN_AT - 60, min_label=2),
    Filters(dst=(SCANNED,), families=("scan",), divergent=True),
    Filters(addrs=("192.0.2.99",)),
    Filters(addrs=("192.0.2.99", SCANNER)),
    Filters(ports=(65000,)),
]


def _write_one(path: Path, small_store: RagStore) -> None:
    """A writer (blocks of ``BLOCK`` ids) stores one event and closes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "_BLOCK", BLOCK)
        writer = EventStore(path)
        ev, d = _events(small_store)[0]
        writer.add([ev], "det", [d])
        writer.close()


def _answers(store: EventStore) -> list[object]:
    """What SQL says for each of FILTERS: count, span, groups, rows, ranking."""
    return sql_answers(store, FILTERS)


def _events(small_store: RagStore) -> list[tuple[ScoredEvent, str]]:
    rows = small_store.store._db.execute("SELECT event, description FROM events ORDER BY id")
    return [(ScoredEvent.FromString(b), str(d)) for b, d in rows]


@pytest.fixture(scope="module")
def blocks_store(tmp_path_factory: pytest.TempPathFactory, small_store: RagStore) -> Iterator[Path]:
    """The small store's events in a store of 16-id blocks, the scanner's flows in three
    runs of ten (the others' source rewritten to addresses of their own), so a few
    blocks name it and most do not."""
    path = tmp_path_factory.mktemp("blocks") / "events.sqlite"
    order = _events(small_store)
    mark = bytes(map(int, SCANNER.split(".")))
    k = 0
    for ev, _ in order:
        if ev.record.src_addr == mark:
            if k % 400 >= 10:
                ev.record.src_addr = bytes([10, 99, k // 256, k % 256])
            k += 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "_BLOCK", BLOCK)
        store = EventStore(path)
        for start in range(0, len(order), 100):  # a detector's batches
            part = order[start : start + 100]
            store.add([e for e, _ in part], "det", [d for _, d in part])
        store.close()
    yield path


def _label_scan(path: Path) -> EventStore:
    """A reader that finds addresses by scanning the label index (the path before)."""
    reader = EventStore(path, readonly=True)
    reader._has_blocks = False
    return reader


def _instructions(store: EventStore, f: Filters) -> int:
    """SQLite VM instructions (in steps of 100) that finding ``f``'s events takes."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(tick, 100)
    try:
        store._matching_ids(f)
    finally:
        store._db.set_progress_handler(None, 0)
    return steps[0] * 100


def test_sql_readers_answer_the_same_through_the_blocks(blocks_store: Path) -> None:
    """Every fact, listing and ranking of filters on addresses and ports is the same
    through event_blocks as through a scan of the label index."""
    before = _label_scan(blocks_store)
    expected = _answers(before)
    before.close()
    reader = EventStore(blocks_store, readonly=True)
    assert reader._block == BLOCK
    got = _answers(reader)
    assert reader._blocks is not None  # the blocks were read
    reader.close()
    assert got == expected
    assert sum(1 for i in range(0, len(expected), 8) if expected[i]) >= 8  # things matched


def test_a_narrow_question_reads_only_the_blocks_naming_its_address(
    blocks_store: Path,
) -> None:
    """An address seen nowhere reads no events at all, and one seen in a few blocks
    reads those blocks, where the scan of the label index read every entry: the
    one-shot `mld rag ask` of "what happened to 10.0.2.20?" took 94 ms at a million
    events without event_blocks (1 ms with the old address indexes)."""
    db = sqlite3.connect(blocks_store)
    total = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    blocks = int(db.execute("SELECT COUNT(*) FROM event_blocks").fetchone()[0])
    db.close()
    assert blocks == total // BLOCK + 1  # ids 1..total
    for f in (Filters(addrs=("192.0.2.99",)), Filters(addrs=(SCANNER,), ports=(65000,))):
        reader = EventStore(blocks_store, readonly=True)
        reader._match_current()
        assert reader._block_ranges(f) == []  # no block names it (the summaries now read)
        blocked = _instructions(reader, f)
        reader.close()
        scan = _label_scan(blocks_store)
        scanned = _instructions(scan, f)
        scan.close()
        assert scanned > 3 * total  # the label scan steps through every entry
        assert blocked < scanned / 4, (f, blocked, scanned)
    # The scanner's three runs of flows: at most two blocks each are read.
    reader = EventStore(blocks_store, readonly=True)
    f = Filters(src=(SCANNER,), dst=(SCANNED,))
    ranges = reader._block_ranges(f)
    assert ranges is not None and sum(b - a + 1 for a, b in ranges) <= 6 * BLOCK
    assert reader.count(f) == 30
    reader.close()


def test_more_than_a_tenth_of_the_ids_goes_through_the_label_index(
    blocks_store: Path,
) -> None:
    """An address in nearly every block (the scanned server) is found by one scan of the
    label index rather than by reading most of the table by id."""
    reader = EventStore(blocks_store, readonly=True)
    assert reader._block_ranges(Filters(dst=(SCANNED,))) is None
    assert reader._block_ranges(Filters(addrs=("192.0.2.99",))) == []
    reader.close()


def _copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def test_a_store_written_before_gets_its_blocks_when_a_writer_opens_it(
    tmp_path: Path, blocks_store: Path
) -> None:
    """A store without event_blocks (main before this change): read-only it answers
    through the label index; a writer summarizes every stored row when it opens it
    (with the block size of the code), and the answers stay the same."""
    path = tmp_path / "events.sqlite"
    _copy(blocks_store, path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE event_blocks")
        db.execute("DELETE FROM meta WHERE key = 'block_ids'")
    old = EventStore(path, readonly=True)
    assert not old._has_blocks and old._block_ranges(FILTERS[0]) is None
    expected = _answers(old)
    old.close()
    EventStore(path).close()  # a writer opens it: blocks of 2048 ids
    after = EventStore(path, readonly=True)
    assert after._has_blocks and after._block == 2048
    assert after._block_ranges(Filters(addrs=("192.0.2.99",))) == []
    assert _answers(after) == expected
    after.close()


def test_rows_a_writer_from_before_stored_are_found_and_summarized_later(
    tmp_path: Path, blocks_store: Path, small_store: RagStore
) -> None:
    """Rows stored by code that does not know event_blocks (an older `mld watch` beside
    a newer `mld rag run`) are past the last summarized id: readers read them by id, and
    the next writer's batch summarizes them with its own."""
    path = tmp_path / "events.sqlite"
    _copy(blocks_store, path)
    db = sqlite3.connect(path)
    top = int(db.execute("SELECT MAX(id) FROM events").fetchone()[0])
    cols = [r[1] for r in db.execute("PRAGMA table_info(events)") if r[1] != "id"]
    names = ", ".join(cols)
    # An older writer's rows: copies of the scanner's flows with another address.
    with db:
        db.execute(
            f"INSERT INTO events ({names}) SELECT "
            + ", ".join("'203.0.113.9'" if c == "src" else c for c in cols)
            + " FROM events WHERE src = ? ORDER BY id LIMIT 30",
            (SCANNER,),
        )
    db.close()
    new = Filters(src=("203.0.113.9",))
    reader = EventStore(path, readonly=True)
    assert reader._block_ranges(new) == [(top + 1, top + 30)]
    assert reader.count(new) == 30
    reader.close()
    _write_one(path, small_store)
    reader = EventStore(path, readonly=True)
    assert reader._block_ranges(new)
    assert reader._blocks is not None and reader._blocks.covered == top + 31  # no tail
    assert reader.count(new) == 30
    reader.close()


def test_retention_drops_the_summaries_of_emptied_blocks(
    tmp_path: Path, blocks_store: Path
) -> None:
    """A retention pass deletes the summaries of blocks it emptied (all of them when it
    empties the store), and what is left answers the same as the label index."""
    path = tmp_path / "events.sqlite"
    _copy(blocks_store, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "_BLOCK", BLOCK)
        writer = EventStore(path)
        total = writer.count()
        writer.prune(None, total // 2)
        first = int(writer._db.execute("SELECT MIN(id) FROM events").fetchone()[0])
        low = writer._db.execute("SELECT MIN(block) FROM event_blocks").fetchone()[0]
        assert low == first // BLOCK
        label = _label_scan(path)
        reader = EventStore(path, readonly=True)
        assert _answers(reader) == _answers(label)
        reader.close()
        label.close()
        writer.prune(None, 0)  # no limit: nothing deleted
        writer.prune(2**40, 0)  # every event is older than that
        assert writer.count() == 0
        left = writer._db.execute("SELECT COUNT(*) FROM event_blocks").fetchone()[0]
        assert left == 0
        writer.close()


def test_a_reader_sees_the_blocks_of_rows_committed_since(
    tmp_path: Path, blocks_store: Path, small_store: RagStore
) -> None:
    """The summaries a reader holds are read again after another connection commits."""
    path = tmp_path / "events.sqlite"
    _copy(blocks_store, path)
    reader = EventStore(path, readonly=True)
    f = Filters(addrs=("198.51.100.77",))
    assert reader.count(f) == 0
    ev, d = _events(small_store)[0]
    ev.record.src_addr = bytes([198, 51, 100, 77])
    ev.record.interim = False
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "_BLOCK", BLOCK)
        writer = EventStore(path)
        writer.add([ev, ev], "det", [d, d])
        writer.close()
    assert reader.count(f) == 2
    assert reader._block_ranges(f) not in (None, [])
    reader.close()


def test_each_block_names_exactly_the_addresses_and_ports_of_its_rows(
    blocks_store: Path,
) -> None:
    """Written batch by batch (batches of 100 across blocks of 16 ids), each block's
    summary is the CRC-32 of every address at either end of its rows and every port,
    nothing missing (a reader would skip the block) and nothing extra."""
    db = sqlite3.connect(blocks_store)
    rows = db.execute("SELECT id, src, dst, src_port, dst_port FROM events").fetchall()
    stored = {
        int(b): (bytes(a), bytes(p))
        for b, a, p in db.execute("SELECT block, addrs, ports FROM event_blocks")
    }
    upto = db.execute("SELECT value FROM meta WHERE key = 'blocks_upto'").fetchone()
    db.close()
    want: dict[int, tuple[set[int], set[int]]] = {}
    for i, src, dst, sport, dport in rows:
        keys, ports = want.setdefault(i // BLOCK, (set(), set()))
        keys.update({store_mod._addr_key(src), store_mod._addr_key(dst)})
        ports.update({sport, dport})
    assert int(upto[0]) == max(r[0] for r in rows)
    assert set(stored) == set(want)
    for block, (keys, ports) in want.items():
        a, p = stored[block]
        assert a == np.array(sorted(keys), dtype="<u4").tobytes(), block
        assert p == np.array(sorted(ports), dtype="<u2").tobytes(), block


def test_a_store_an_older_writer_emptied_is_not_read_through_stale_blocks(
    tmp_path: Path, blocks_store: Path, small_store: RagStore
) -> None:
    """An older writer's retention empties the table without touching event_blocks, and
    its next rows take ids from 1 again, below ``blocks_upto``: readers do not trust the
    blocks (ids past the newest row), and the next writer summarizes afresh."""
    path = tmp_path / "events.sqlite"
    _copy(blocks_store, path)
    db = sqlite3.connect(path)
    cols = [r[1] for r in db.execute("PRAGMA table_info(events)") if r[1] != "id"]
    names = ", ".join(cols)
    with db:
        db.execute(
            "CREATE TEMP TABLE keep AS SELECT * FROM events WHERE src = ? LIMIT 5", (SCANNER,)
        )
        db.execute("DELETE FROM events")
        db.execute(
            f"INSERT INTO events ({names}) SELECT "
            + ", ".join("'203.0.113.7'" if c == "src" else c for c in cols)
            + " FROM keep"
        )
    db.close()
    new = Filters(src=("203.0.113.7",))
    reader = EventStore(path, readonly=True)
    assert reader._block_ranges(new) is None
    assert reader.count(new) == 5
    reader.close()
    _write_one(path, small_store)
    reader = EventStore(path, readonly=True)
    assert reader.count(new) == 5
    reader._block_ranges(new)  # six ids, one block: the label index is cheaper
    assert reader._blocks is not None and reader._blocks.covered == 6
    assert reader._blocks.blocks.tolist() == [0]  # the stale blocks are gone
    assert reader._blocks.naming(new).tolist() == [0]
    reader.close()
