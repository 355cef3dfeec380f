"""The event store: every scored event in SQLite, the source of truth.

One row per flow: the columns questions filter and group on (time, addresses,
ports, protocol, family, label, scores, sizes), indexed by time, family and label (the
addresses and ports of each block of ids summarized in ``event_blocks``), plus the whole
ScoredEvent as received (``event`` blob), so every field is kept even when no column
holds it. An event's id is its row id; answers cite it as
``[e<id>]``.

Latest state per flow: a long flow comes as interim records (FlowRecord.interim) and then
its final record, all with the same ``flow_id`` from the same sensor. Each new record of a
flow replaces the row of its previous one (upsert by sensor and flow id, in the same
transaction): the store keeps the flow's latest state, not a row per update, and the
flow's row gets the new record's id (``superseded`` lists the ids replaced, so the FAISS
indexes drop their vectors). Only interim rows are replaced: a final record stays, so the
same capture imported twice stores its flows twice, as before.

Writes go in one transaction per batch. The database runs in WAL mode with
``synchronous=NORMAL``: a killed process loses nothing that was committed (a power cut
can lose the last transactions, not corrupt the file). The FAISS indexes (rag/vectors.py)
are derived from this table and can always be rebuilt from it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from base.errors import RagError
from proto.events_pb2 import BlockDecision, ScoredEvent
from rag.columns import DELETED_LOG_KEEP, GROUPED, FactColumns

log = logging.getLogger(__name__)

__all__ = [
    "BLOCK_OUTCOMES",
    "PROTOCOLS",
    "BlockRow",
    "EventRow",
    "EventStore",
    "Filters",
    "address_text",
]

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
LABELS = {0: "unspecified", 1: "benign", 2: "suspicious", 3: "malicious"}

# The alerts' index holds every column the facts of a question group or count the alerts
# by, so "top sources of the alerts today" reads this narrow index (~60 bytes a row)
# rather than the table's rows (~1 kB with the event blob): see _facts_index.
# SQLite's page cache (default 2 MB). Past ~10k events the indexes' pages no longer fit
# it and were read back from the OS on inserts and on the facts' scans.
_CACHE_KIB = 64 * 1024
# WAL pages between automatic checkpoints (SQLite's default 1000, 4 MB). A batch of
# 1000 events dirties a page of each index it inserts into at random places (sources,
# ports, verdict ids), several MB a batch at 100k+ events: the default checkpointed
# (copied into the database and fsync'ed) every batch or two. 16k pages (64 MB): ingest
# of rows 200k-300k went from 143 to 110 us a row (wall; CPU 46 -> 39) on the loaded
# VM; a checkpoint still runs every few seconds of full-speed ingest.
_WAL_PAGES = 16384
# How long a statement waits for another process's write lock (``mld watch`` and
# ``mld rag run`` write one store; readers wait on a checkpoint's): Python's default is
# 5 s, too short on a loaded machine where a writer's batch and checkpoint can hold it.
_BUSY_S = 60.0
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

# src_port last: with it the index holds every column an address or port filter reads, so
# SQL readers filter addresses and ports in it (_index_hint) now that the writer keeps no
# index keyed by them (_DROPPED).
_LABEL_COLUMNS = "label, ts, family, src, dst, dst_port, last_ts, src_port"
# The time index holds the flow's end too: the span (first and last seen) of a time range
# is read from the index alone.
_TS_COLUMNS = "ts, last_ts"
_WIDENED = {"events_label": _LABEL_COLUMNS, "events_ts": _TS_COLUMNS}
# Indexes stores had until issue 21 item 6's fifth pass, dropped when a writer opens one.
# Keyed by address or port, every row went into each at a random place: at 100k-300k
# events the four cost a writer 13 us of the 56 an SQLite row took, and more the larger
# the store (their pages no longer fit the page cache). Their readers moved off them: the
# console's facts come from the columns in memory (rag/columns.py), the rows it shows by
# id, and SQL readers (a one-shot ``mld rag ask``) filter addresses and ports inside
# events_label (_index_hint), a scan of ~70 bytes a row rather than a seek.
_DROPPED = ("events_src", "events_dst", "events_src_port", "events_dst_port")
# Event ids per row of event_blocks, the summary of the addresses and ports a block of
# consecutive ids holds (issue 21 item 6, sixth pass): a SQL reader scans only the blocks
# whose summary names the question's address or port (by id, ~4 pages of the table per 16
# rows) instead of the whole label index. Smaller blocks skip more precisely and make more
# summary rows to read per question (2048: ~490 rows at 1M events).
_BLOCK = 2048

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,            -- flow start, s since the epoch
    last_ts REAL NOT NULL,       -- flow end
    scored_ts REAL NOT NULL,     -- when the detector scored it
    stored_ts REAL NOT NULL,     -- when it was written here
    sensor TEXT NOT NULL,
    detector TEXT NOT NULL,
    verdict_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,       -- uint64 as decimal text (SQLite integers are signed 64-bit)
    ip_version INTEGER NOT NULL,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    src_port INTEGER NOT NULL,
    dst_port INTEGER NOT NULL,
    proto INTEGER NOT NULL,
    family TEXT NOT NULL,        -- the verdict's family (the best-scoring one)
    label INTEGER NOT NULL,      -- 1 benign, 2 suspicious (alert), 3 malicious (blocked)
    final_score REAL NOT NULL,
    fast_score REAL NOT NULL,
    fast_rule TEXT NOT NULL,
    ml_score REAL NOT NULL,
    ml_family TEXT NOT NULL,
    packets INTEGER NOT NULL,    -- both directions
    bytes INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    description TEXT NOT NULL,   -- the sentence the text index embeds
    event BLOB NOT NULL          -- the ScoredEvent as received
);
CREATE INDEX IF NOT EXISTS events_ts ON events ({ts_columns});
CREATE INDEX IF NOT EXISTS events_family ON events (family, label, ts);
CREATE INDEX IF NOT EXISTS events_label ON events ({label_columns});
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,            -- when the agent decided, s since the epoch
    stored_ts REAL NOT NULL,     -- when it was written here
    agent TEXT NOT NULL,         -- firewall agent id
    decision_id TEXT NOT NULL,
    action TEXT NOT NULL,        -- block, extend, unblock, skip
    outcome TEXT NOT NULL,       -- applied, dry_run, allowlisted, rate_limited, failed, ...
    addr TEXT NOT NULL,          -- network address of the prefix
    prefix_len INTEGER NOT NULL,
    ttl_s INTEGER NOT NULL,
    expires_ts REAL NOT NULL,    -- 0 for unblock and skip
    reason TEXT NOT NULL,
    family TEXT NOT NULL,
    final_score REAL NOT NULL,
    verdict_ids TEXT NOT NULL,   -- space-separated Verdict.verdict_id (events.verdict_id)
    backend TEXT NOT NULL,       -- xdp, nftables, none
    decision BLOB NOT NULL       -- the BlockDecision as received
);
CREATE INDEX IF NOT EXISTS blocks_ts ON blocks (ts);
CREATE INDEX IF NOT EXISTS blocks_addr ON blocks (addr, ts);
CREATE INDEX IF NOT EXISTS events_verdict ON events (verdict_id);
-- Retention's age limit reads the old rows through it, not the whole table; appended at
-- its end (the stored time grows), so it costs an insert little.
CREATE INDEX IF NOT EXISTS events_stored ON events (stored_ts);
-- Ids of deleted events (replaced interim records, retention), written in the deleting
-- transaction: readers' in-memory columns (rag/columns.py) drop them from it.
CREATE TABLE IF NOT EXISTS deleted (seq INTEGER PRIMARY KEY, id INTEGER NOT NULL);
-- What addresses and ports each block of consecutive event ids holds (_Blocks; the meta
-- ``block_ids`` says how many ids a block has, ``blocks_upto`` up to which id they do):
-- SQL readers read only the blocks that may hold a question's address or port. Written in
-- the storing transaction, at the end of the table (the newest block's row is rewritten).
CREATE TABLE IF NOT EXISTS event_blocks (
    block INTEGER PRIMARY KEY,   -- ids block * block_ids .. (block + 1) * block_ids - 1
    addrs BLOB NOT NULL,         -- CRC-32 of each address text at either end, uint32, sorted
    ports BLOB NOT NULL          -- each port at either end, uint16, sorted
);
"""
_SCHEMA = _SCHEMA.replace("{label_columns}", _LABEL_COLUMNS).replace("{ts_columns}", _TS_COLUMNS)

# Where the fast rules and the forests disagree strongly: one says malicious (at or above
# the detector's default block threshold, 0.9), the other benign (below its default alert
# threshold, 0.5). A virtual column: added to an existing store without rewriting it, and
# computed for the events stored before it existed.
DIVERGENT_HIGH = 0.9
DIVERGENT_LOW = 0.5
_DIVERGENT = (
    "ALTER TABLE events ADD COLUMN divergent INTEGER GENERATED ALWAYS AS ("
    f"(fast_score >= {DIVERGENT_HIGH} AND ml_score < {DIVERGENT_LOW}) OR "
    f"(ml_score >= {DIVERGENT_HIGH} AND fast_score < {DIVERGENT_LOW})) VIRTUAL"
)

_COLUMNS = (
    "id, ts, last_ts, src, dst, src_port, dst_port, proto, family, label, final_score, "
    "fast_score, fast_rule, ml_score, packets, bytes, sensor, description, ml_family"
)
_BLOCK_COLUMNS = (
    "id, ts, agent, action, outcome, addr, prefix_len, ttl_s, expires_ts, reason, family, "
    "final_score, verdict_ids, backend"
)
_ACTIONS = {
    BlockDecision.ACTION_BLOCK: "block",
    BlockDecision.ACTION_EXTEND: "extend",
    BlockDecision.ACTION_UNBLOCK: "unblock",
    BlockDecision.ACTION_SKIP: "skip",
}
BLOCK_OUTCOMES = {
    BlockDecision.OUTCOME_APPLIED: "applied",
    BlockDecision.OUTCOME_DRY_RUN: "dry_run",
    BlockDecision.OUTCOME_ALLOWLISTED: "allowlisted",
    BlockDecision.OUTCOME_RATE_LIMITED: "rate_limited",
    BlockDecision.OUTCOME_FAILED: "failed",
    BlockDecision.OUTCOME_TABLE_FULL: "table_full",
    BlockDecision.OUTCOME_REJECTED: "rejected",
}
_BACKENDS = {
    BlockDecision.BACKEND_XDP: "xdp",
    BlockDecision.BACKEND_NFTABLES: "nftables",
    BlockDecision.BACKEND_NONE: "none",
}


@functools.lru_cache(maxsize=1 << 16)  # the same addresses come back in every batch
def address_text(raw: bytes) -> str:
    """An address from a FlowRecord (4 or 16 bytes) as text; '' if empty."""
    if not raw:
        return ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return raw.hex()


def _covers(row: BlockRow, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return addr in ipaddress.ip_network(f"{row.addr}/{row.prefix_len}", strict=False)
    except ValueError:
        return False


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True)
class EventRow:
    """The columns of one stored event that answers and the console use."""

    id: int
    ts: float
    last_ts: float
    src: str
    dst: str
    src_port: int
    dst_port: int
    proto: int
    family: str
    label: int
    final_score: float
    fast_score: float
    fast_rule: str
    ml_score: float
    packets: int
    bytes: int
    sensor: str
    description: str
    ml_family: str = ""

    @property
    def divergent(self) -> bool:
        """The fast rules and the forests disagree strongly (see DIVERGENT_HIGH)."""
        hi, lo = DIVERGENT_HIGH, DIVERGENT_LOW
        return (self.fast_score >= hi and self.ml_score < lo) or (
            self.ml_score >= hi and self.fast_score < lo
        )

    def disagreement(self) -> str:
        """How the two parts scored this flow, in words (for divergent events)."""
        rule = self.fast_rule or "no rule"
        forest = self.ml_family or self.family
        return (
            f"the fast rules ({rule}) scored {self.fast_score:.2f}, the {forest} forest "
            f"scored {self.ml_score:.2f}"
        )

    @property
    def label_name(self) -> str:
        return LABELS.get(self.label, str(self.label))

    @property
    def proto_name(self) -> str:
        return PROTOCOLS.get(self.proto, str(self.proto))

    def line(self) -> str:
        """One structured line, as the model and the console see it."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.ts))
        rule = f" rule={self.fast_rule}" if self.fast_rule else ""
        return (
            f"[e{self.id}] {when}Z {self.label_name} {self.family} score={self.final_score:.2f}"
            f"{rule} {self.proto_name} {_hostport(self.src, self.src_port)} -> "
            f"{_hostport(self.dst, self.dst_port)} packets={self.packets} bytes={self.bytes}"
        )

    def to_json(self) -> dict[str, object]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["label"] = self.label_name
        out["proto"] = self.proto_name
        out["event_id"] = f"e{self.id}"
        return out


@dataclass(frozen=True)
class BlockRow:
    """One firewall decision as the RAG store keeps it (table ``blocks``)."""

    id: int
    ts: float
    agent: str
    action: str
    outcome: str
    addr: str
    prefix_len: int
    ttl_s: int
    expires_ts: float
    reason: str
    family: str
    final_score: float
    verdict_ids: str
    backend: str

    @property
    def network(self) -> str:
        full = 32 if ":" not in self.addr else 128
        return self.addr if self.prefix_len == full else f"{self.addr}/{self.prefix_len}"

    @property
    def refused(self) -> bool:
        """A block the agent decided on but did not put in place."""
        return self.action in ("block", "extend", "skip") and self.outcome not in (
            "applied",
            "dry_run",
        )

    def line(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.ts))
        until = (
            f" until {time.strftime('%H:%M:%S', time.gmtime(self.expires_ts))}Z"
            if self.expires_ts
            else ""
        )
        return (
            f"[b{self.id}] {when}Z {self.action} {self.network} {self.outcome}{until} "
            f"({self.reason})"
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {n: getattr(self, n) for n in self.__dataclass_fields__}
        out["verdict_ids"] = self.verdict_ids.split()
        out["decision_id"] = f"b{self.id}"
        return out


@dataclass(frozen=True)
class Filters:
    """Hard filters of a question, applied in SQL. Empty fields filter nothing."""

    since_ts: float | None = None
    until_ts: float | None = None
    # Either end of the flow is one of these addresses.
    addrs: tuple[str, ...] = ()
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    # Either port is one of these.
    ports: tuple[int, ...] = ()
    families: tuple[str, ...] = ()
    min_label: int = 0
    protos: tuple[int, ...] = ()
    fast_rules: tuple[str, ...] = ()
    ids: tuple[int, ...] = field(default=())
    # Only events where the fast rules and the forests disagree strongly.
    divergent: bool = False

    def where(self) -> tuple[str, list[object]]:
        """The SQL condition and its parameters."""
        cond, params = self._where()
        if self.divergent:
            cond = "divergent = 1" if cond == "1" else f"{cond} AND divergent = 1"
        return cond, params

    def _where(self) -> tuple[str, list[object]]:
        parts: list[str] = []
        params: list[object] = []

        def one_of(column: str, values: Sequence[object]) -> None:
            parts.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)

        if self.since_ts is not None:
            parts.append("ts >= ?")
            params.append(self.since_ts)
        if self.until_ts is not None:
            parts.append("ts < ?")
            params.append(self.until_ts)
        if self.addrs:
            marks = ",".join("?" * len(self.addrs))
            parts.append(f"(src IN ({marks}) OR dst IN ({marks}))")
            params.extend(self.addrs * 2)
        if self.src:
            one_of("src", self.src)
        if self.dst:
            one_of("dst", self.dst)
        if self.ports:
            marks = ",".join("?" * len(self.ports))
            parts.append(f"(src_port IN ({marks}) OR dst_port IN ({marks}))")
            params.extend(self.ports * 2)
        if self.families:
            one_of("family", self.families)
        if self.min_label:
            parts.append("label >= ?")
            params.append(self.min_label)
        if self.protos:
            one_of("proto", self.protos)
        if self.fast_rules:
            one_of("fast_rule", self.fast_rules)
        if self.ids:
            one_of("id", self.ids)
        return (" AND ".join(parts) or "1"), params

    @property
    def empty(self) -> bool:
        return self == Filters()


def _flat(
    ev: ScoredEvent,
    detector_id: str,
    description: str,
    now: float,
    codes: bytes | None = None,
    serialized: bytes | None = None,
) -> tuple[object, ...]:
    """The row of ``ev``; ``serialized``: its bytes, if the caller has them."""
    r, v = ev.record, ev.verdict
    return (
        r.first_ts_ns / 1e9,
        r.last_ts_ns / 1e9,
        v.scored_ts_ns / 1e9,
        now,
        ev.sensor_id,
        detector_id,
        v.verdict_id,
        str(r.flow_id),
        r.ip_version,
        address_text(r.src_addr),
        address_text(r.dst_addr),
        r.src_port,
        r.dst_port,
        r.protocol,
        v.family,
        int(v.label),
        v.final_score,
        v.fast_score,
        v.fast_rule,
        v.ml_score,
        v.ml_family,
        r.fwd.packets + r.bwd.packets,
        r.fwd.bytes + r.bwd.bytes,
        v.model_version,
        description,
        ev.SerializeToString() if serialized is None else serialized,
        codes,
        int(r.interim),
    )


_FLOW_COL, _SENSOR_COL = 7, 4  # of _flat's tuple

# The order events are listed and ranked in: highest score, then newest, then the last
# stored (the id makes it one order whichever index SQLite reads, and the columns' own;
# events of a flood start in the same microsecond with the same score).
_BEST_FIRST = "final_score DESC, ts DESC, id DESC"

_INSERT = (
    "INSERT INTO events (ts, last_ts, scored_ts, stored_ts, sensor, detector, verdict_id, "
    "flow_id, ip_version, src, dst, src_port, dst_port, proto, family, label, final_score, "
    "fast_score, fast_rule, ml_score, ml_family, packets, bytes, model_version, description, "
    "event, text_codes, interim) VALUES (" + ",".join("?" * 28) + ")"
)
# Where _flat's tuple holds the columns event_blocks summarizes (from _INSERT's own list).
_INSERT_NAMES = [c.strip() for c in _INSERT.split("(", 1)[1].split(")", 1)[0].split(",")]
_SUMMARIZED = tuple(_INSERT_NAMES.index(c) for c in ("src", "dst", "src_port", "dst_port"))
# Whether the row is an interim record of its flow (FlowRecord.interim), with an index of
# the interim rows only: the records replacing them find them there, and not every row of
# the same flow id (flow ids come back: at a million events the replayed captures' flows
# had 30 rows each, every one read and parsed on each batch). NULL in rows stored before
# the column (ids below the meta ``interim_from_id``): their blobs say.
_INTERIM = (
    "ALTER TABLE events ADD COLUMN interim INTEGER",
    "CREATE INDEX IF NOT EXISTS events_interim ON events (flow_id, sensor) WHERE interim = 1",
)
# The description's hashed tokens (rag/describe.py text_codes, uint16), so a question's
# ranking embeds the events it reads without tokenizing them again (NULL in rows stored
# before the column: their descriptions are tokenized).
_TEXT_CODES = "ALTER TABLE events ADD COLUMN text_codes BLOB"


@functools.lru_cache(maxsize=1 << 16)  # the same addresses come back in every batch
def _addr_key(text: str) -> int:
    """An address's key in event_blocks: CRC-32 of its text (stable across processes,
    unlike hash(); two addresses sharing a key only make a reader scan a block more)."""
    return zlib.crc32(text.encode())


_Summary = dict[int, tuple[int, set[str], set[int]]]


def _merged(stored: bytes, values: Iterable[int], kind: str) -> bytes | None:
    """``stored`` (sorted unique values of ``kind``) with ``values`` added, or None when
    it holds them all already."""
    old = np.frombuffer(stored, dtype=kind)
    new = np.unique(np.fromiter(values, dtype=kind))
    if len(old):
        at = np.minimum(np.searchsorted(old, new), len(old) - 1)
        new = new[old[at] != new]
    if not len(new):
        return None if len(old) else b""
    return np.sort(np.concatenate([old, new])).tobytes()


def _summaries(items: Iterable[Sequence[Any]], block_ids: int, out: _Summary) -> _Summary:
    """(id, src, dst, src_port, dst_port) rows added to ``out`` by block: (last id,
    addresses, ports)."""
    for i, src, dst, sport, dport in items:
        block = i // block_ids
        got = out.get(block)
        if got is None:
            got = out[block] = (i, set(), set())
        elif i > got[0]:
            out[block] = got = (i, got[1], got[2])
        got[1].add(src)
        got[1].add(dst)
        got[2].add(sport)
        got[2].add(dport)
    return out


class _Blocks:
    """event_blocks as a reader holds it: the blocks, and each block's address keys and
    ports as one flat array each, read when a question first filters on them (at a
    million events ~490 blocks, 3 MB of address keys, 1 MB of ports)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # The id summarized up to first: the blocks read after it hold at least as much.
        row = db.execute("SELECT value FROM meta WHERE key = 'blocks_upto'").fetchone()
        self.covered = 0 if row is None else int(row[0])
        rows = db.execute("SELECT block FROM event_blocks ORDER BY block").fetchall()
        self.blocks = np.array([r[0] for r in rows], dtype=np.int64)
        self._flat: dict[str, tuple[npt.NDArray[np.generic], npt.NDArray[np.int64]]] = {}

    def naming(self, filters: Filters) -> npt.NDArray[np.int64]:
        """The blocks whose summary names one of each of ``filters``' address and port
        groups (a block without them cannot hold a matching event)."""
        keep = np.ones(len(self.blocks), dtype=bool)
        for group in (filters.addrs, filters.src, filters.dst):
            if group:
                keys = np.array(sorted({_addr_key(a) for a in group}), dtype="<u4")
                keep &= self._any("addrs", keys)
        if filters.ports:
            keep &= self._any("ports", np.array(sorted(set(filters.ports)), dtype="<u2"))
        return self.blocks[keep]

    def _any(self, column: str, wanted: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
        if column not in self._flat:
            kind = "<u4" if column == "addrs" else "<u2"
            rows = self._db.execute(
                f"SELECT block, {column} FROM event_blocks ORDER BY block"
            ).fetchall()
            if [r[0] for r in rows] != self.blocks.tolist():  # a writer changed them since
                raise _BlocksChanged
            parts = [np.frombuffer(r[1], dtype=kind) for r in rows]
            values = np.concatenate(parts) if parts else np.zeros(0, dtype=kind)
            ends = np.cumsum([len(x) for x in parts], dtype=np.int64)
            self._flat[column] = (values, ends)
        values, ends = self._flat[column]
        hit = np.zeros(len(self.blocks), dtype=bool)
        found = np.flatnonzero(np.isin(values, wanted))
        hit[np.searchsorted(ends, found, side="right")] = True
        return hit


class _BlocksChanged(Exception):
    """event_blocks changed between a reader's reads of it."""


# A SQL reader's events of a question's addresses and ports (EventStore._matching_ids):
# at most this many in a temporary table of ids, in at most this many tables at once.
_MATCH_MAX = 20_000
_MATCH_TABLES = 4
# Read the blocks event_blocks names, by id, while they hold at most this share of the
# store's ids; beyond, one scan of the label index (~70 bytes a row against a row of the
# table, ~1 kB) costs less. Measured at 956k events (CPU): the rows of 21 % of the ids
# by id 127 ms against 107 for the whole label index, 2.5 % 32 ms against 112.
_BLOCKS_SHARE = 0.1
# A gap of unsummarized ids larger than this is read from the label index (one scan, ~70
# bytes a row) rather than the table by id (the migration of a store written before).
_GAP_BY_INDEX = 50_000


def _covered(filters: Filters) -> Filters:
    """The part of ``filters`` the alerts' index (events_label) answers alone."""
    return Filters(
        since_ts=filters.since_ts,
        until_ts=filters.until_ts,
        families=filters.families,
        min_label=filters.min_label,
    )


class EventStore:
    """The SQLite event table; one connection, used from one thread."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.exists():
                    raise RagError(
                        f"no event store at {self.path}: run `mld rag run` (or `mld rag "
                        "import CAPTURE`) first, or pass --db"
                    )
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=_BUSY_S)
                self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=_BUSY_S)
                self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
                self._widen_indexes()
                self._db.executescript(_SCHEMA)
                self._drop_address_indexes()
                if not self._has_column("text_codes"):
                    with self._db:
                        self._db.execute(_TEXT_CODES)
                if not self._has_column("interim"):
                    with self._db:
                        self._db.execute("BEGIN IMMEDIATE")
                        for sql in _INTERIM:
                            self._db.execute(sql)
                        self._db.execute(
                            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            ("interim_from_id", str(self.max_id() + 1)),
                        )
                if not self._has_divergent():
                    with self._db:
                        self._db.execute(_DIVERGENT)
                        self._db.execute(
                            "CREATE INDEX IF NOT EXISTS events_divergent ON events (divergent, ts)"
                        )
                self._open_blocks()
        except sqlite3.Error as exc:
            raise RagError(f"cannot open the event store {self.path}: {exc}") from exc
        # Ids of rows the last add() replaced by a newer record of the same flow.
        self.superseded: list[int] = []
        # _matching_ids' temporary tables by their filters, for this version of the store.
        self._matches: dict[tuple[tuple[object, ...], ...], str | None] = {}
        self._match_version = (-1, -1)
        # A store a writer opened since _DROPPED has no index keyed by address or port:
        # SQL filters on them read events_label (_index_hint). A read-only store written
        # before keeps them and SQLite's planner uses them.
        self._address_indexes = self._has_index("events_src")
        # A read-only store written before event_blocks: its addresses are found by a scan
        # of the label index.
        self._has_blocks = self._has_table("event_blocks")
        self._block = int(self.meta("block_ids") or _BLOCK) if self._has_blocks else _BLOCK
        self._blocks: _Blocks | None = None  # read for this version of the store
        # A read-only store written before the text codes has none to read.
        self._codes = "text_codes" if self._has_column("text_codes") else "NULL"
        # The facts' columns in memory (use_fact_columns), None: SQL answers them.
        self.columns: FactColumns | None = None
        self._seen_version = -1  # PRAGMA data_version at the columns' last refresh
        self._wrote = False  # this connection changed events since then

    def use_fact_columns(self) -> bool:
        """Answer ``count``, ``group`` and ``span`` from the columns in memory
        (rag/columns.py: 67 MB at 1M events, read whole at the first question, then what
        changed before each one), not SQL; False (and SQL it stays) for a store written
        before the deleted log, until a writer opens it."""
        if self.columns is None:
            found = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deleted'"
            ).fetchone()
            if found is None:
                log.info("%s has no deleted log yet: facts from SQL", self.path)
                return False
            self.columns = FactColumns((DIVERGENT_HIGH, DIVERGENT_LOW))
        return True

    def _fresh_columns(self) -> FactColumns | None:
        """The columns, first brought up to date if the table may have changed: another
        connection committed (``data_version``) or this one wrote."""
        if self.columns is None:
            return None
        try:
            version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
            if self.columns.loaded and version == self._seen_version and not self._wrote:
                return self.columns
            self._seen_version, self._wrote = version, False
            self.columns.refresh(self._db)
        except sqlite3.Error as exc:
            raise RagError(f"cannot read the event store {self.path}: {exc}") from exc
        return self.columns

    def _widen_indexes(self) -> None:
        """Stores written before the alerts' and the time index held the facts' columns
        get them now (dropped here, built again by the schema: once, seconds at a million
        events)."""
        for name, columns in _WIDENED.items():
            cols = [r[2] for r in self._db.execute(f"PRAGMA index_info({name})")]
            if cols and ", ".join(cols) != columns:
                log.info("widening the index %s of %s (once)", name, self.path)
                with self._db:
                    self._db.execute(f"DROP INDEX {name}")

    def _drop_address_indexes(self) -> None:
        """Drop the indexes keyed by address or port (_DROPPED) of a store written before
        (once; freeing their pages takes a second or two at a million events)."""
        found = [name for name in _DROPPED if self._has_index(name)]
        if found:
            log.info("dropping the indexes %s of %s (once)", ", ".join(found), self.path)
            with self._db:
                for name in found:
                    self._db.execute(f"DROP INDEX {name}")

    def _has_table(self, name: str) -> bool:
        return self._has("table", name)

    def _has_index(self, name: str) -> bool:
        return self._has("index", name)

    def _has(self, kind: str, name: str) -> bool:
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)
        ).fetchone()
        return found is not None

    def _facts_index(self, filters: Filters) -> str:
        """``INDEXED BY events_label`` when the filters are the alerts' (min_label) and
        use only columns that index holds: SQLite's planner otherwise groups by src
        through events_src (sorted, no temporary b-tree) and reads every row of the table
        for its label, 3x slower at 100k events (rag/README.md, *Speed*); and when they
        filter addresses or ports (_index_hint)."""
        if filters.min_label and filters == _covered(filters):
            return " INDEXED BY events_label"
        return self._index_hint(filters)

    def _source(self, filters: Filters, *, facts: bool = False) -> tuple[str, str, list[object]]:
        """What a SQL reader's query of ``filters`` reads: the index hint after ``FROM
        events``, the condition and its parameters. ``facts``: a count or group of the
        facts' columns (_facts_index). In a store without the indexes keyed by address or
        port, the events of the question's addresses and ports are found once, by a scan
        of events_label, into a temporary table of ids (_matching_ids) that the question's
        other queries (its counts, groups, span, rows: ~10) read by id, rather than each
        scanning the index again (~10 ms each at 100k events, 0.1 us an entry)."""
        if self._index_hint(filters):
            # "as source" and "as destination" of the question's addresses: the rows of its
            # table of either end, when it has one, checked for the end.
            one_end = filters.src if not filters.dst else filters.dst if not filters.src else ()
            either = None
            if one_end and not filters.addrs and not filters.ports:
                self._match_current()
                either = self._matches.get((one_end, (), (), ()))
            table = either or self._matching_ids(filters)
            if table is not None:
                kept = (
                    {"src": filters.src, "dst": filters.dst} if either else {"src": (), "dst": ()}
                )
                rest = replace(filters, addrs=(), ports=(), **kept)
                where, params = rest.where()
                within = f"id IN {table}"
                return "", within if where == "1" else f"{within} AND {where}", params
        where, params = filters.where()
        return self._facts_index(filters) if facts else self._index_hint(filters), where, params

    def _matching_ids(self, filters: Filters) -> str | None:
        """A temporary table of the ids of the events of ``filters``' addresses and ports
        (only those filters), filled by one scan of events_label; None when more than
        _MATCH_MAX match (each query reading so many rows by id is slower than its own
        scan of the index). Kept for the next queries (up to _MATCH_TABLES tables) until
        the store changes (another connection's commit or this one's)."""
        key = (filters.addrs, filters.src, filters.dst, filters.ports)
        version = self._match_current()
        if key in self._matches:
            return self._matches[key]
        part = Filters(addrs=filters.addrs, src=filters.src, dst=filters.dst, ports=filters.ports)
        where, params = part.where()
        name = f"temp.match_{len(self._matches) % _MATCH_TABLES}"
        ranges = self._block_ranges(part)
        with self._db:
            self._db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name[5:]} (id INTEGER PRIMARY KEY)")
            self._db.execute(f"DELETE FROM {name}")
            if ranges is None:
                self._db.execute(
                    f"INSERT INTO {name} SELECT id FROM events INDEXED BY events_label "
                    f"WHERE {where} LIMIT ?",
                    [*params, _MATCH_MAX + 1],
                )
                found = int(self._db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
            else:
                found = 0
                for lo, hi in ranges:
                    self._db.execute(
                        f"INSERT INTO {name} SELECT id FROM events "
                        f"WHERE id BETWEEN ? AND ? AND {where} LIMIT ?",
                        [lo, hi, *params, _MATCH_MAX + 1 - found],
                    )
                    found = int(self._db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
                    if found > _MATCH_MAX:
                        break
        table = name if found <= _MATCH_MAX else None
        self._matches = {k: v for k, v in self._matches.items() if v != name}
        self._matches[key] = table
        # total_changes counts the temporary table's rows: the version after filling it.
        self._match_version = (version[0], self._db.total_changes)
        return table

    def _match_current(self) -> tuple[int, int]:
        """Forget _matching_ids' tables if the store changed since they were filled."""
        version = (
            int(self._db.execute("PRAGMA data_version").fetchone()[0]),
            self._db.total_changes,
        )
        if version != self._match_version:
            self._match_version, self._matches = version, {}
            self._blocks = None
        return version

    def _block_ranges(self, filters: Filters) -> list[tuple[int, int]] | None:
        """The id ranges that may hold the events of ``filters``' addresses and ports: the
        blocks whose summary (event_blocks) names them, and the ids after the last one
        summarized (rows a writer from before event_blocks stored). None when the store
        has no summaries, or when the ranges hold more than _BLOCKS_SHARE of its ids
        (then one scan of the label index is cheaper)."""
        if not self._has_blocks or any(not 0 <= p < 65536 for p in filters.ports):
            return None
        if self._blocks is None:
            self._block = int(self.meta("block_ids") or _BLOCK)
            self._blocks = _Blocks(self._db)
        lo, hi = self._db.execute(
            "SELECT (SELECT MIN(id) FROM events), (SELECT MAX(id) FROM events)"
        ).fetchone()
        if lo is None:
            return []
        if self._blocks.covered > hi:  # ids used again (the table emptied): not these
            return None
        try:
            named = self._blocks.naming(filters).tolist()
        except _BlocksChanged:  # a writer added a block meanwhile: the next call reads
            self._blocks = None  # them again
            return None
        ranges: list[tuple[int, int]] = []
        for block in named:
            start, end = block * self._block, (block + 1) * self._block - 1
            if ranges and ranges[-1][1] + 1 == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        if hi > self._blocks.covered:
            ranges.append((self._blocks.covered + 1, hi))
        ids = sum(min(b, hi) - max(a, lo) + 1 for a, b in ranges if b >= lo and a <= hi)
        if ids > _BLOCKS_SHARE * (hi - lo + 1):
            return None
        return ranges

    def _index_hint(self, filters: Filters) -> str:
        """``INDEXED BY events_label`` for a filter on addresses or ports in a store without
        the indexes keyed by them (_DROPPED): the label index holds both ends and both
        ports, so SQLite checks them in the index (~70 bytes a row; its label range when
        the question is about alerts) and reads only the matching rows, where its planner
        would otherwise read every row of the table (~1 kB each). Rows asked for by id are
        read by id."""
        if self._address_indexes or filters.ids:
            return ""
        if filters.addrs or filters.src or filters.dst or filters.ports:
            return " INDEXED BY events_label"
        return ""

    def _has_column(self, name: str) -> bool:
        return any(r[1] == name for r in self._db.execute("PRAGMA table_xinfo(events)"))

    def _has_divergent(self) -> bool:
        return self._has_column("divergent")

    def _check_divergent(self) -> None:
        if not self._has_divergent():
            raise RagError(
                f"the event store {self.path} predates divergence marks: open it once with "
                "`mld rag run` or `mld rag reindex`, which add them"
            )

    def add_blocks(self, decisions: Sequence[BlockDecision]) -> range:
        """Store firewall decisions in one transaction; returns their row ids."""
        now = time.time()
        rows = [
            (
                d.decided_ts_ns / 1e9,
                now,
                d.agent_id,
                d.decision_id,
                _ACTIONS.get(d.action, "unspecified"),
                BLOCK_OUTCOMES.get(d.outcome, "unspecified"),
                address_text(d.addr),
                d.prefix_len,
                d.ttl_s,
                d.expires_ts_ns / 1e9,
                d.reason,
                d.family,
                d.final_score,
                " ".join(d.verdict_ids),
                _BACKENDS.get(d.backend, "none"),
                d.SerializeToString(),
            )
            for d in decisions
        ]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM blocks").fetchone()
                first = int(row[0]) + 1
                self._db.executemany(
                    "INSERT INTO blocks (ts, stored_ts, agent, decision_id, action, outcome, "
                    "addr, prefix_len, ttl_s, expires_ts, reason, family, final_score, "
                    "verdict_ids, backend, decision) VALUES (" + ",".join("?" * 16) + ")",
                    rows,
                )
        except sqlite3.Error as exc:
            raise RagError(f"cannot write to the event store {self.path}: {exc}") from exc
        return range(first, first + len(rows))

    def blocks(
        self,
        *,
        addrs: Sequence[str] = (),
        since_ts: float | None = None,
        until_ts: float | None = None,
        actions: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[BlockRow]:
        """Firewall decisions, oldest first: of these addresses (an address inside a
        blocked prefix matches it), in [since_ts, until_ts), of these actions."""
        parts, params = [], []  # type: tuple[list[str], list[object]]
        if since_ts is not None:
            parts.append("ts >= ?")
            params.append(since_ts)
        if until_ts is not None:
            parts.append("ts < ?")
            params.append(until_ts)
        if actions:
            parts.append(f"action IN ({','.join('?' * len(actions))})")
            params.extend(actions)
        where = " AND ".join(parts) or "1"
        sql = f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE {where} ORDER BY ts, id"
        rows = [BlockRow(*r) for r in self._db.execute(sql, params)]
        if addrs:
            wanted = [ipaddress.ip_address(a) for a in addrs]
            rows = [r for r in rows if any(_covers(r, a) for a in wanted)]
        return rows if limit is None else rows[-limit:]

    def count_blocks(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    def events_of_verdicts(
        self, verdict_ids: Sequence[str], addrs: Sequence[str], limit: int = 20
    ) -> list[EventRow]:
        """The stored events the verdicts behind a decision came from: their verdict id,
        and the decision's address at one end (a verdict id names one verdict of one
        detector run; another detector, or the same one restarted, may reuse it)."""
        if not verdict_ids or not addrs:
            return []
        marks = ",".join("?" * len(verdict_ids))
        ends = ",".join("?" * len(addrs))
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE verdict_id IN ({marks}) "
            f"AND (src IN ({ends}) OR dst IN ({ends})) ORDER BY final_score DESC, ts DESC LIMIT ?"
        )
        params = [*verdict_ids, *addrs, *addrs, limit]
        return [EventRow(*r) for r in self._db.execute(sql, params)]

    def add(
        self,
        events: Sequence[ScoredEvent],
        detector_id: str,
        descriptions: Sequence[str],
        meta: Mapping[str, str] | None = None,
        codes: Sequence[npt.NDArray[np.uint16] | bytes] | None = None,
        *,
        serialized: Sequence[bytes] | None = None,
    ) -> range:
        """Store events in one transaction, with ``meta`` rows (written in the same
        commit, so they say exactly what was stored); returns their ids (consecutive).

        A record of a flow already stored (same sensor and flow_id: an interim record
        and the records after it) replaces that flow's row; ``superseded`` then holds the
        ids deleted, which may include ids of this call when a batch holds several
        records of one flow. ``codes``: the descriptions' text_codes (rag/describe.py), as
        arrays or their bytes; ``serialized``: the events' bytes (``SerializeToString``),
        if the caller has them (the ingest, which decodes its feature rows from them)."""
        now = time.time()
        blobs = (
            [c if isinstance(c, bytes) else c.tobytes() for c in codes]
            if codes is not None
            else [None] * len(events)
        )
        if serialized is None:
            serialized = [ev.SerializeToString() for ev in events]
        rows = [
            _flat(ev, detector_id, d, now, b, s)
            for ev, d, b, s in zip(events, descriptions, blobs, serialized, strict=True)
        ]
        try:
            with self._db:
                # The write lock first: read after it, the next id is ours even when another
                # process (mld watch run beside mld rag run) writes to the same store.
                self._db.execute("BEGIN IMMEDIATE")
                first = self.max_id() + 1
                self._wrote = True
                self._db.executemany(_INSERT, rows)
                self._summarize(first, rows)
                self.superseded = self._supersede(rows, first)
                if meta:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items()
                    )
        except sqlite3.Error as exc:
            raise RagError(f"cannot write to the event store {self.path}: {exc}") from exc
        return range(first, first + len(rows))

    def prune(self, stored_before: float | None, max_events: int) -> list[int]:
        """Delete the events stored before ``stored_before`` (None: no age limit) and the
        oldest beyond the newest ``max_events`` (0: no limit), in one transaction;
        returns the ids deleted (their vectors are the caller's to remove).

        Reads only what it deletes: the count from the smallest index, the oldest rows
        past ``max_events`` from the start of the table, the old ones through
        ``events_stored``. It read the whole table before (a scan for the stored time,
        another skipping the newest ``max_events`` rows): at a million events ~1.2 GB of
        rows every ``rag.prune_interval_s``, with nothing to delete."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                upto = 0  # every id <= upto goes
                if max_events > 0:
                    total = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
                    if total > max_events:
                        row = self._db.execute(
                            "SELECT id FROM events ORDER BY id LIMIT 1 OFFSET ?",
                            (total - max_events - 1,),
                        ).fetchone()
                        upto = int(row[0])
                cutoff = -1.0 if stored_before is None else stored_before
                where = "id <= ? OR stored_ts < ?"
                ids = [
                    int(r[0])
                    for r in self._db.execute(
                        f"SELECT id FROM events WHERE {where}",
                        (upto, cutoff),
                    )
                ]
                if ids:
                    self._wrote = True
                    self._db.execute(f"DELETE FROM events WHERE {where}", (upto, cutoff))
                    self._log_deleted(ids)
                    # The summaries of blocks left without events; all of them when none
                    # is (the next id is 1 again).
                    self._db.execute(
                        "DELETE FROM event_blocks WHERE block < COALESCE("
                        f"(SELECT MIN(id) FROM events) / {self._block}, "
                        "(SELECT MAX(block) + 1 FROM event_blocks))"
                    )
                    self._db.execute(
                        "UPDATE meta SET value = '0' WHERE key = 'blocks_upto' "
                        "AND NOT EXISTS (SELECT 1 FROM events)"
                    )
                    self._db.execute(
                        "DELETE FROM deleted WHERE seq <= (SELECT MAX(seq) FROM deleted) - ?",
                        (DELETED_LOG_KEEP,),
                    )
        except sqlite3.Error as exc:
            raise RagError(f"cannot prune the event store {self.path}: {exc}") from exc
        return ids

    def _supersede(self, rows: Sequence[tuple[object, ...]], first: int) -> list[int]:
        """Delete the interim rows that the newest row of each flow of ``rows`` (ids from
        ``first``) replaces: earlier interim records of the same (sensor, flow_id), stored
        before or in this batch. A final record is never replaced (the same capture
        imported twice still stores its flows twice). Returns the ids deleted."""
        newest: dict[tuple[object, object], int] = {}
        for k, row in enumerate(rows):
            newest[(row[_FLOW_COL], row[_SENSOR_COL])] = first + k
        gone: list[int] = []
        keys = list(newest)
        # Rows stored before the interim column: their flow's rows are read (events_flow,
        # the index those stores have) and their blobs parsed.
        legacy = int(self.meta("interim_from_id") or 1) - 1
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            flows = [fid for fid, _ in part]
            found = self._db.execute(
                f"SELECT id, flow_id, sensor FROM events INDEXED BY events_interim "
                f"WHERE interim = 1 AND flow_id IN ({marks})",
                flows,
            ).fetchall()
            gone += [i for i, fid, sensor in found if i < newest.get((fid, sensor), -1)]
            if legacy:
                old = self._db.execute(
                    f"SELECT id, flow_id, sensor, event FROM events WHERE flow_id IN ({marks}) "
                    "AND id <= ? AND interim IS NULL",
                    [*flows, legacy],
                ).fetchall()
                gone += [
                    i
                    for i, fid, sensor, blob in old
                    if i < newest.get((fid, sensor), -1)
                    and ScoredEvent.FromString(blob).record.interim
                ]
        for start in range(0, len(gone), 500):
            ids = gone[start : start + 500]
            marks = ",".join("?" * len(ids))
            self._db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        self._log_deleted(gone)
        return sorted(gone)

    def _open_blocks(self) -> None:
        """A writer's start: event_blocks summarizes every stored row, in blocks of
        _BLOCK ids (a store written before gets them now, once: ~1 s at a million events;
        a store summarized with another block size gets them again)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self.meta("block_ids") != str(_BLOCK):
                self._db.execute("DELETE FROM event_blocks")
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [("block_ids", str(_BLOCK)), ("blocks_upto", "0")],
                )
            self._block = _BLOCK
            self._summarize(self.max_id() + 1, ())

    def _summarize(self, first: int, rows: Sequence[tuple[object, ...]]) -> None:
        """Add the addresses and ports of ``rows`` (ids from ``first``; _flat's tuples) to
        event_blocks, in the caller's transaction, with those of the rows before ``first``
        no summary covers yet (the meta ``blocks_upto``): stored by a writer from before
        event_blocks, or the whole table of a store written before (once, when a writer
        opens it). Per batch: the sets of its addresses and ports, the keys of those the
        block's row lacks, and that row rewritten only when there are any (at the end of
        the table); ~2 us of CPU a row in batches of 100 (was ~4.5 rewriting it always)."""
        covered = int(self.meta("blocks_upto") or 0)
        if covered > first - 1:  # past the newest row: another writer emptied the table
            self._db.execute("DELETE FROM event_blocks")  # and its ids start again at 1
            covered = 0
        blocks: _Summary = {}
        if covered < first - 1:
            hint = " INDEXED BY events_label" if first - 1 - covered > _GAP_BY_INDEX else ""
            log.info("summarizing ids %d-%d of %s", covered + 1, first - 1, self.path)
            cursor = self._db.execute(
                f"SELECT id, src, dst, src_port, dst_port FROM events{hint} "
                "WHERE id > ? AND id < ?",
                (covered, first),
            )
            while chunk := cursor.fetchmany(50_000):
                _summaries(chunk, self._block, blocks)
        s, d, sp, dp = _SUMMARIZED
        k = 0
        while k < len(rows):  # the batch's rows block by block (consecutive ids)
            block = (first + k) // self._block
            part = rows[k : (block + 1) * self._block - first]
            k += len(part)
            got = blocks.setdefault(block, (0, set(), set()))
            got[1].update({r[s] for r in part}, {r[d] for r in part})  # type: ignore[misc]
            got[2].update({r[sp] for r in part}, {r[dp] for r in part})  # type: ignore[misc]
        for block, (_, addrs, ports) in blocks.items():
            old = self._db.execute(
                "SELECT addrs, ports FROM event_blocks WHERE block = ?", (block,)
            ).fetchone()
            keys = _merged(old[0] if old else b"", map(_addr_key, addrs), "<u4")
            nums = _merged(old[1] if old else b"", (p for p in ports if 0 <= p < 65536), "<u2")
            if old is None or keys is not None or nums is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO event_blocks (block, addrs, ports) VALUES (?, ?, ?)",
                    (
                        block,
                        keys if keys is not None else old[0],
                        nums if nums is not None else old[1],
                    ),
                )
        upto = max(covered, first + len(rows) - 1)
        if upto != covered:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('blocks_upto', ?)", (str(upto),)
            )

    def _log_deleted(self, ids: Sequence[int]) -> None:
        """Record deleted ids (in the deleting transaction) for readers' columns."""
        if ids:
            self._db.executemany("INSERT INTO deleted (id) VALUES (?)", ((i,) for i in ids))

    def max_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

    def count(self, filters: Filters = Filters()) -> int:
        if filters.divergent:
            self._check_divergent()
        columns = self._fresh_columns()
        if columns is not None:
            return columns.count(filters)
        source, where, params = self._source(filters)
        sql = f"SELECT COUNT(*) FROM events{source} WHERE {where}"
        return int(self._db.execute(sql, params).fetchone()[0])

    def rows(
        self,
        filters: Filters = Filters(),
        *,
        limit: int = 20,
        order: str = _BEST_FIRST,
    ) -> list[EventRow]:
        if order == _BEST_FIRST and not filters.ids:
            columns = self._fresh_columns()
            if columns is not None:
                return self.get(columns.best_ids(filters, limit))
        return self._select(filters, limit, order)

    def _select(self, filters: Filters, limit: int, order: str) -> list[EventRow]:
        source, where, params = self._source(filters)
        sql = f"SELECT {_COLUMNS} FROM events{source} WHERE {where} ORDER BY {order} LIMIT ?"
        return [EventRow(*r) for r in self._db.execute(sql, [*params, limit])]

    def ranking(
        self, filters: Filters = Filters(), *, limit: int = 20
    ) -> list[tuple[int, float, bytes | None, str | None]]:
        """(id, final score, text codes, description when there are no codes) of the
        events ``rows`` would return, in its order: what a question's ranking needs,
        without building every row."""
        codes = self._codes
        what = f"id, final_score, {codes}, CASE WHEN {codes} IS NULL THEN description END"
        columns = None if filters.ids else self._fresh_columns()
        if columns is not None:
            ids = columns.best_ids(filters, limit)
            marks = ",".join("?" * len(ids))
            found = {
                int(r[0]): r
                for r in self._db.execute(f"SELECT {what} FROM events WHERE id IN ({marks})", ids)
            }
            got = [found[i] for i in ids if i in found]
        else:
            source, where, params = self._source(filters)
            sql = f"SELECT {what} FROM events{source} WHERE {where} ORDER BY {_BEST_FIRST} LIMIT ?"
            got = self._db.execute(sql, [*params, limit]).fetchall()
        return [(int(i), float(s), c, d) for i, s, c, d in got]

    def get(self, ids: Sequence[int]) -> list[EventRow]:
        """Rows by id, in the order of ``ids`` (missing ids are left out)."""
        if not ids:
            return []
        found = {r.id: r for r in self._select(Filters(ids=tuple(ids)), len(ids), _BEST_FIRST)}
        return [found[i] for i in ids if i in found]

    def event(self, event_id: int) -> ScoredEvent | None:
        row = self._db.execute("SELECT event FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else ScoredEvent.FromString(row[0])

    def group(
        self, column: str, filters: Filters = Filters(), limit: int = 5
    ) -> list[tuple[str, int]]:
        """The most frequent values of ``column`` (src, dst, family, dst_port, ...)."""
        if column not in (
            "src",
            "dst",
            "family",
            "dst_port",
            "src_port",
            "proto",
            "fast_rule",
            "label",
            "sensor",
        ):
            raise RagError(f"cannot group events by {column!r}")
        columns = self._fresh_columns() if column in GROUPED else None
        if columns is not None:
            return columns.group(column, filters, limit)
        source, where, params = self._source(
            filters, facts=column in ("src", "dst", "family", "dst_port")
        )
        sql = (
            f"SELECT {column}, COUNT(*) AS n FROM events{source} WHERE {where} "
            f"GROUP BY {column} ORDER BY n DESC, {column} LIMIT ?"
        )
        return [(str(v), int(n)) for v, n in self._db.execute(sql, [*params, limit])]

    def span(self, filters: Filters = Filters()) -> tuple[float, float] | None:
        columns = self._fresh_columns()
        if columns is not None:
            return columns.span(filters)
        source, where, params = self._source(filters, facts=True)
        row = self._db.execute(
            f"SELECT MIN(ts), MAX(last_ts) FROM events{source} WHERE {where}", params
        ).fetchone()
        return None if row[0] is None else (float(row[0]), float(row[1]))

    def scan(
        self, after_id: int = 0, batch: int = 10000, until_id: int | None = None
    ) -> Iterator[list[tuple[int, bytes, str]]]:
        """(id, event blob, description) of every event after ``after_id`` (up to
        ``until_id``, included), in batches."""
        last = after_id
        until = until_id if until_id is not None else 2**63 - 1
        while True:
            rows = self._db.execute(
                "SELECT id, event, description FROM events WHERE id > ? AND id <= ? "
                "ORDER BY id LIMIT ?",
                (last, until, batch),
            ).fetchall()
            if not rows:
                return
            yield [(int(i), bytes(b), str(d)) for i, b, d in rows]
            last = int(rows[-1][0])

    def recent(
        self,
        *,
        window_s: float,
        limit: int,
        until_ts: float | None = None,
        exclude_labels: Sequence[int] = (),
        batch: int = 10000,
    ) -> Iterator[list[tuple[float, bytes]]]:
        """(ts, event blob) of the newest ``limit`` events that started at most
        ``window_s`` before ``until_ts`` (default: the newest event's start, or now when
        that lies in the future), newest first, in batches: the anomaly model's training
        window. Reads through the time index, so the cost follows ``limit``, not the size
        of the store."""
        if until_ts is None:
            row = self._db.execute(
                "SELECT MAX(ts) FROM events WHERE ts <= ?", (time.time(),)
            ).fetchone()
            if row[0] is None:
                return
            until_ts = float(row[0])
        marks = ",".join("?" * len(exclude_labels))
        skip = f" AND label NOT IN ({marks})" if exclude_labels else ""
        cursor = self._db.execute(
            f"SELECT ts, event FROM events WHERE ts >= ? AND ts <= ?{skip} "
            "ORDER BY ts DESC LIMIT ?",
            (until_ts - window_s, until_ts, *exclude_labels, limit),
        )
        while rows := cursor.fetchmany(batch):
            yield [(float(t), bytes(b)) for t, b in rows]

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def optimize(self) -> None:
        """Refresh the query planner's statistics (cheap; SQLite decides what to do).

        An optimisation, so it does not wait for another writer's lock, and a busy or
        locked database skips it (the next save tries again) rather than failing the
        caller's save (``mld rag run`` stopped on "database is locked" here)."""
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            self._db.execute("PRAGMA optimize")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES:
                raise
            if self._db.in_transaction:
                self._db.rollback()
            log.debug("PRAGMA optimize skipped, %s busy: %s", self.path, exc)
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {int(_BUSY_S * 1000)}")

    def shrink_cache(self) -> None:
        """Free this connection's page cache (``PRAGMA shrink_memory``). A writer's cache
        grows up to cache_size (64 MB) as the database does, which the lab's 60-minute
        soak counted as RAG growth (about 1.7 kB an event until full); emptied after each
        save, it holds what one save period's batches touch, read back from the OS's
        file cache when needed again."""
        self._db.execute("PRAGMA shrink_memory")

    def set_meta(self, key: str, value: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()
