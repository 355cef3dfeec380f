"""The event store: every scored event in SQLite, the source of truth.

One row per flow: the columns questions filter and group on (time, addresses,
ports, protocol, family, label, scores, sizes), indexed by time, source, destination,
family and label, plus the whole ScoredEvent as received (``event`` blob), so every field
is kept even when no column holds it. An event's id is its row id; answers cite it as
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
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from base.errors import RagError
from proto.events_pb2 import ScoredEvent

__all__ = ["PROTOCOLS", "EventRow", "EventStore", "Filters", "address_text"]

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
LABELS = {0: "unspecified", 1: "benign", 2: "suspicious", 3: "malicious"}

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
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_src ON events (src, ts);
CREATE INDEX IF NOT EXISTS events_dst ON events (dst, ts);
CREATE INDEX IF NOT EXISTS events_family ON events (family, label, ts);
CREATE INDEX IF NOT EXISTS events_label ON events (label, ts);
CREATE INDEX IF NOT EXISTS events_dst_port ON events (dst_port, ts);
CREATE INDEX IF NOT EXISTS events_src_port ON events (src_port, ts);
CREATE INDEX IF NOT EXISTS events_flow ON events (flow_id, sensor);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "id, ts, last_ts, src, dst, src_port, dst_port, proto, family, label, final_score, "
    "fast_score, fast_rule, ml_score, packets, bytes, sensor, description"
)


@functools.lru_cache(maxsize=1 << 16)  # the same addresses come back in every batch
def address_text(raw: bytes) -> str:
    """An address from a FlowRecord (4 or 16 bytes) as text; '' if empty."""
    if not raw:
        return ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return raw.hex()


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

    def where(self) -> tuple[str, list[object]]:
        """The SQL condition and its parameters."""
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


def _flat(ev: ScoredEvent, detector_id: str, description: str, now: float) -> tuple[object, ...]:
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
        ev.SerializeToString(),
    )


_FLOW_COL, _SENSOR_COL = 7, 4  # of _flat's tuple

_INSERT = (
    "INSERT INTO events (ts, last_ts, scored_ts, stored_ts, sensor, detector, verdict_id, "
    "flow_id, ip_version, src, dst, src_port, dst_port, proto, family, label, final_score, "
    "fast_score, fast_rule, ml_score, ml_family, packets, bytes, model_version, description, "
    "event) VALUES (" + ",".join("?" * 26) + ")"
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
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise RagError(f"cannot open the event store {self.path}: {exc}") from exc
        # Ids of rows the last add() replaced by a newer record of the same flow.
        self.superseded: list[int] = []

    def add(
        self,
        events: Sequence[ScoredEvent],
        detector_id: str,
        descriptions: Sequence[str],
        meta: Mapping[str, str] | None = None,
    ) -> range:
        """Store events in one transaction, with ``meta`` rows (written in the same
        commit, so they say exactly what was stored); returns their ids (consecutive).

        A record of a flow already stored (same sensor and flow_id: an interim record
        and the records after it) replaces that flow's row; ``superseded`` then holds the
        ids deleted, which may include ids of this call when a batch holds several
        records of one flow."""
        now = time.time()
        rows = [_flat(ev, detector_id, d, now) for ev, d in zip(events, descriptions, strict=True)]
        try:
            with self._db:
                # The write lock first: read after it, the next id is ours even when another
                # process (mld watch run beside mld rag run) writes to the same store.
                self._db.execute("BEGIN IMMEDIATE")
                first = self.max_id() + 1
                self._db.executemany(_INSERT, rows)
                self.superseded = self._supersede(rows, first)
                if meta:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items()
                    )
        except sqlite3.Error as exc:
            raise RagError(f"cannot write to the event store {self.path}: {exc}") from exc
        return range(first, first + len(rows))

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
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            found = self._db.execute(
                f"SELECT id, flow_id, sensor, event FROM events WHERE flow_id IN ({marks})",
                [fid for fid, _ in part],
            ).fetchall()
            gone += [
                i
                for i, fid, sensor, blob in found
                if i < newest.get((fid, sensor), -1) and ScoredEvent.FromString(blob).record.interim
            ]
        for start in range(0, len(gone), 500):
            ids = gone[start : start + 500]
            marks = ",".join("?" * len(ids))
            self._db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
        return sorted(gone)

    def max_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

    def count(self, filters: Filters = Filters()) -> int:
        where, params = filters.where()
        return int(
            self._db.execute(f"SELECT COUNT(*) FROM events WHERE {where}", params).fetchone()[0]
        )

    def rows(
        self,
        filters: Filters = Filters(),
        *,
        limit: int = 20,
        order: str = "final_score DESC, ts DESC",
    ) -> list[EventRow]:
        where, params = filters.where()
        sql = f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT ?"
        return [EventRow(*r) for r in self._db.execute(sql, [*params, limit])]

    def get(self, ids: Sequence[int]) -> list[EventRow]:
        """Rows by id, in the order of ``ids`` (missing ids are left out)."""
        if not ids:
            return []
        found = {r.id: r for r in self.rows(Filters(ids=tuple(ids)), limit=len(ids))}
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
        where, params = filters.where()
        sql = (
            f"SELECT {column}, COUNT(*) AS n FROM events WHERE {where} "
            f"GROUP BY {column} ORDER BY n DESC, {column} LIMIT ?"
        )
        return [(str(v), int(n)) for v, n in self._db.execute(sql, [*params, limit])]

    def span(self, filters: Filters = Filters()) -> tuple[float, float] | None:
        where, params = filters.where()
        row = self._db.execute(
            f"SELECT MIN(ts), MAX(last_ts) FROM events WHERE {where}", params
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
        """Refresh the query planner's statistics (cheap; SQLite decides what to do)."""
        self._db.execute("PRAGMA optimize")

    def set_meta(self, key: str, value: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()
