"""The facts' columns in memory: counts, group-bys and spans at a million events in
milliseconds.

Every question's facts (rag/retrieve.py ``facts_for``) count the matching events and
group them by family, source, destination and port. At a million events SQLite reads
one index entry per matching event for each of those, ~1 µs each: a question matching
864k alerts took 1.8 s (rag/README.md, *Speed*). :class:`FactColumns` holds the columns
the filters and the group-bys use as NumPy arrays (67 MB at 1M events; addresses,
families and fast rules as codes into dictionaries), so a filter is a few vector
comparisons and a group-by one ``bincount``.

SQLite stays the source of truth; the columns are a copy, read from it and kept up to
date before every use (``refresh``):

* events added since (id greater than the last one read) are read and appended, in id
  order;
* events deleted since (a newer record of an interim flow replaced them, retention)
  are read from the ``deleted`` log, which every writer appends to in the same
  transaction as the delete (rag/store.py), and marked dead;
* both in one read transaction, so the copy is one committed state of the table;
* a copy that has fallen behind the log (it keeps the newest ``DELETED_LOG_KEEP``
  entries) is read again whole.

The results are the SQL queries' own, to the order of ties: counts descending, then the
value as SQLite sorts it (text byte-wise, ports as numbers). tests/rag/test_columns.py
checks every question of the quality scenario both ways.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from rag.store import Filters

__all__ = ["DELETED_LOG_KEEP", "GROUPED", "FactColumns"]

log = logging.getLogger(__name__)

# Entries the deleted log keeps (older ones go when retention runs): a copy further
# behind than this reads the table again.
DELETED_LOG_KEEP = 1_000_000

# Columns ``group`` answers from memory (others go to SQL).
GROUPED = ("src", "dst", "family", "dst_port")

_READ = (
    "SELECT id, ts, last_ts, label, family, src, dst, src_port, dst_port, proto, fast_rule, "
    "fast_score, ml_score, final_score FROM events WHERE id > ? ORDER BY id"
)
_CHUNK = 50_000
_MASKS = 8  # filters' masks kept per state of the copy (facts_for asks ~8 things of 3)

_DTYPES: dict[str, npt.DTypeLike] = {
    "id": np.int64,
    "ts": np.float64,
    "last_ts": np.float64,
    "label": np.int8,
    "family": np.int32,
    "src": np.int32,
    "dst": np.int32,
    "src_port": np.int32,
    "dst_port": np.int32,
    "proto": np.int16,
    "fast_rule": np.int32,
    "final_score": np.float64,
    "divergent": np.bool_,
    "alive": np.bool_,
}


class _Codes:
    """Strings as consecutive integer codes, in order of first appearance."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self._names: list[str] = []
        # The first 16 bytes of each value's UTF-8, as two big-endian integers (zero
        # padded): the order of these keys is the values' own order as far as it goes.
        self._keys = np.zeros((0, 2), dtype=np.uint64)

    def encode(self, values: Sequence[str]) -> npt.NDArray[np.int32]:
        code = self.code
        return np.array([code.setdefault(v, len(code)) for v in values], dtype=np.int32)

    def lookup(self, values: Sequence[str]) -> list[int]:
        return [self.code[v] for v in values if v in self.code]

    @property
    def names(self) -> list[str]:
        if len(self._names) < len(self.code):
            self._names.extend(itertools.islice(self.code, len(self._names), None))
        return self._names

    @property
    def keys(self) -> npt.NDArray[np.uint64]:
        """``(len, 2)`` sort-key prefixes of the values, by code (see ``_smallest``)."""
        have = len(self._keys)
        if have < len(self.code):
            new = self.names[have:]
            raw = b"".join(v.encode()[:16].ljust(16, b"\0") for v in new)
            more = np.frombuffer(raw, dtype=">u8").reshape(len(new), 2).astype(np.uint64)
            self._keys = np.concatenate([self._keys, more])
        return self._keys


class FactColumns:
    """The events' filter and group-by columns as arrays, refreshed from SQLite."""

    def __init__(self, divergent: tuple[float, float]) -> None:
        # rag/store.py's generated column ``divergent``: (high, low) thresholds.
        self.high, self.low = divergent
        self.reads = 0  # whole reads of the table (the first, and after falling behind)
        self.last_refresh_s = 0.0
        self._reset()

    def _reset(self) -> None:
        self._cols = {name: np.zeros(0, dtype=dt) for name, dt in _DTYPES.items()}
        self.n = 0  # rows used in the arrays (dead ones included)
        self.dead = 0
        self.upto = 0  # every event id up to this one has been read
        self.seq = 0  # every deleted-log entry up to this one has been applied
        self.addrs = _Codes()  # src and dst share one dictionary
        self.families = _Codes()
        self.rules = _Codes()
        self.version = 0  # changes whenever the rows do (the masks' cache key)
        self._masks: dict[Filters, npt.NDArray[np.bool_]] = {}
        self.loaded = False

    def __len__(self) -> int:
        return self.n - self.dead

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._cols.values())

    def col(self, name: str) -> npt.NDArray[Any]:
        return self._cols[name][: self.n]

    # ---- keeping up with the table ---------------------------------------------------------

    def refresh(self, db: sqlite3.Connection) -> None:
        """Read what was added and deleted since the last refresh, in one snapshot."""
        started = time.perf_counter()
        in_tx = db.in_transaction
        if not in_tx:
            db.execute("BEGIN")
        try:
            # Two subqueries: SQLite reads the ends of the key only for a lone MIN or MAX
            # (both in one SELECT scan the whole log).
            low, high = db.execute(
                "SELECT (SELECT MIN(seq) FROM deleted), (SELECT MAX(seq) FROM deleted)"
            ).fetchone()
            top = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            behind = low is not None and self.seq < high and low > self.seq + 1
            # Ids start again below what was read when every event was deleted.
            if self.loaded and (behind or top < self.upto):
                log.info("the event columns fell behind the table: reading them again")
                self._reset()
            first_read = not self.loaded
            added = self._append(db)
            if first_read:
                self.loaded = True
                self.reads += 1
                self.seq = int(high or 0)  # the rows read already lack what was deleted
            elif high is not None and high > self.seq:
                gone = [
                    int(r[0])
                    for r in db.execute(
                        "SELECT id FROM deleted WHERE seq > ? ORDER BY seq", (self.seq,)
                    )
                ]
                self._mark_dead(gone)
                self.seq = int(high)
            elif not added:
                return
        finally:
            if not in_tx:
                db.execute("COMMIT")
            self.last_refresh_s = time.perf_counter() - started
        self.version += 1
        self._masks.clear()
        if self.dead > 10_000 and self.dead * 4 > self.n:
            self._compact()

    def _append(self, db: sqlite3.Connection) -> int:
        cursor = db.execute(_READ, (self.upto,))
        added = 0
        while rows := cursor.fetchmany(_CHUNK):
            cols = list(zip(*rows, strict=True))
            ids, ts, last_ts, label, family, src, dst, sport, dport, proto = cols[:10]
            rule, fast, ml, score = cols[10:]
            fast_a = np.array(fast, dtype=np.float64)
            ml_a = np.array(ml, dtype=np.float64)
            # rag/store.py _DIVERGENT, the generated column, computed the same way.
            hi, lo = self.high, self.low
            divergent = ((fast_a >= hi) & (ml_a < lo)) | ((ml_a >= hi) & (fast_a < lo))
            self._extend(
                {
                    "id": np.array(ids, dtype=np.int64),
                    "ts": np.array(ts, dtype=np.float64),
                    "last_ts": np.array(last_ts, dtype=np.float64),
                    "label": np.array(label, dtype=np.int8),
                    "family": self.families.encode(family),
                    "src": self.addrs.encode(src),
                    "dst": self.addrs.encode(dst),
                    "src_port": np.array(sport, dtype=np.int32),
                    "dst_port": np.array(dport, dtype=np.int32),
                    "proto": np.array(proto, dtype=np.int16),
                    "fast_rule": self.rules.encode(rule),
                    "final_score": np.array(score, dtype=np.float64),
                    "divergent": divergent,
                    "alive": np.ones(len(ids), dtype=np.bool_),
                }
            )
            self.upto = int(ids[-1])
            added += len(ids)
        return added

    def _extend(self, new: dict[str, np.ndarray]) -> None:
        k = len(new["id"])
        need = self.n + k
        if need > len(self._cols["id"]):
            size = max(need, int(len(self._cols["id"]) * 1.5), 1024)
            for name, arr in self._cols.items():
                grown = np.zeros(size, dtype=arr.dtype)
                grown[: self.n] = arr[: self.n]
                self._cols[name] = grown
        for name, arr in new.items():
            self._cols[name][self.n : need] = arr
        self.n = need

    def _mark_dead(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        have = self.col("id")
        wanted = np.asarray(ids, dtype=np.int64)
        at = np.searchsorted(have, wanted)
        ok = at < self.n
        at = at[ok]
        at = at[have[at] == wanted[ok]]
        alive = self._cols["alive"]
        self.dead += int(alive[at].sum())
        alive[at] = False

    def _compact(self) -> None:
        keep = self.col("alive").copy()
        for name in self._cols:
            self._cols[name] = self.col(name)[keep].copy()
        self.n = len(self._cols["id"])
        self.dead = 0

    # ---- questions -------------------------------------------------------------------------

    def mask(self, f: Filters) -> npt.NDArray[np.bool_]:
        """The rows ``f.where()`` selects (read-only; cached until the rows change)."""
        got = self._masks.get(f)
        if got is not None:
            return got
        c = self.col
        m = c("alive").copy()

        def either(a: str, b: str, values: Sequence[int]) -> npt.NDArray[np.bool_]:
            return _one_of(c(a), values) | _one_of(c(b), values)

        if f.since_ts is not None:
            m &= c("ts") >= f.since_ts
        if f.until_ts is not None:
            m &= c("ts") < f.until_ts
        if f.addrs:
            m &= either("src", "dst", self.addrs.lookup(f.addrs))
        if f.src:
            m &= _one_of(c("src"), self.addrs.lookup(f.src))
        if f.dst:
            m &= _one_of(c("dst"), self.addrs.lookup(f.dst))
        if f.ports:
            m &= either("src_port", "dst_port", list(f.ports))
        if f.families:
            m &= _one_of(c("family"), self.families.lookup(f.families))
        if f.min_label:
            m &= c("label") >= f.min_label
        if f.protos:
            m &= _one_of(c("proto"), list(f.protos))
        if f.fast_rules:
            m &= _one_of(c("fast_rule"), self.rules.lookup(f.fast_rules))
        if f.ids:
            m &= _one_of(c("id"), list(f.ids))
        if f.divergent:
            m &= c("divergent")
        if len(self._masks) >= _MASKS:
            self._masks.pop(next(iter(self._masks)))
        m.flags.writeable = False
        self._masks[f] = m
        return m

    def count(self, f: Filters) -> int:
        return int(np.count_nonzero(self.mask(f)))

    def span(self, f: Filters) -> tuple[float, float] | None:
        m = self.mask(f)
        if not m.any():
            return None
        return float(self.col("ts")[m].min()), float(self.col("last_ts")[m].max())

    def best_ids(self, f: Filters, limit: int) -> list[int]:
        """Ids of the ``limit`` matching events of highest score, then newest, then the
        last stored (rag/store.py ``_BEST_FIRST``)."""
        at = np.flatnonzero(self.mask(f))
        score = self.col("final_score")
        if len(at) > limit:
            kth = np.partition(score[at], len(at) - limit)[len(at) - limit]
            at = at[score[at] >= kth]
        ids = self.col("id")[at]
        order = np.lexsort((-ids, -self.col("ts")[at], -score[at]))
        return [int(i) for i in ids[order[:limit]]]

    def group(self, column: str, f: Filters, limit: int) -> list[tuple[str, int]]:
        """``SELECT column, COUNT(*) ... GROUP BY column ORDER BY n DESC, column LIMIT``."""
        values = self.col(column)[self.mask(f)]
        if column == "dst_port":
            codes, counts = _counts(values, 65536)
            return [(str(v), n) for v, n in _top(codes, counts, limit, int)]
        book = self.addrs if column in ("src", "dst") else self.families
        names = book.names
        codes, counts = _counts(values, len(names))
        top = _top(codes, counts, limit, names.__getitem__, book.keys)
        return [(names[c], n) for c, n in top]


def _counts(
    values: npt.NDArray[Any], distinct: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct values of ``values`` (codes below ``distinct``) and their counts: one
    bincount over all the codes when the values are many, a sort of the values when they
    are few (a bincount of a million codes for a few thousand values costs more)."""
    if len(values) * 8 < distinct:
        uniq, counts = np.unique(values, return_counts=True)
        return uniq.astype(np.int64), counts.astype(np.int64)
    full = np.bincount(values, minlength=1) if len(values) else np.zeros(0, np.int64)
    codes = np.flatnonzero(full)
    return codes, full[codes]


def _top(
    codes: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    limit: int,
    key: Callable[[int], Any],
    sort_keys: npt.NDArray[np.uint64] | None = None,
) -> list[tuple[int, int]]:
    """The ``limit`` (code, count) pairs of highest count, ties by ``key(code)``
    ascending (the value's own order, as SQL's ``ORDER BY n DESC, value``);
    ``sort_keys``: the values' key prefixes by code (``_Codes.keys``)."""
    if len(codes) > limit:
        kth = np.partition(counts, len(counts) - limit)[len(counts) - limit]
        above = counts > kth
        tied = codes[counts == kth]
        # Many values may tie at the last place (spoofed sources seen once each): only
        # the smallest of them by value can make it.
        need = limit - int(above.sum())
        smallest = _smallest(tied, need, key, sort_keys)
        keep = np.concatenate([np.flatnonzero(above), np.flatnonzero(np.isin(codes, smallest))])
        codes, counts = codes[keep], counts[keep]
    pairs = zip(codes.tolist(), counts.tolist(), strict=True)
    return sorted(pairs, key=lambda p: (-p[1], key(p[0])))[:limit]


_FEW = 256  # candidates ordered by their values in Python


def _smallest(
    codes: npt.NDArray[np.int64],
    need: int,
    key: Callable[[int], Any],
    sort_keys: npt.NDArray[np.uint64] | None,
) -> list[int]:
    """The ``need`` codes of smallest ``key``. Without ``sort_keys``, or among few, in
    Python; else first narrowed to the codes whose key prefix is at most the ``need``-th
    smallest prefix (one that sorts after it has ``need`` values before it), with NumPy:
    a question over a million spoofed sources seen once each tied them all at the last
    place of "top sources" (132 ms at 1M events, most of it ordering them in Python)."""
    if sort_keys is not None and len(codes) > _FEW:
        hi = sort_keys[codes, 0]
        kth = np.partition(hi, need - 1)[need - 1]
        codes = codes[hi <= kth]
        if len(codes) > _FEW:
            both = sort_keys[codes]
            order = np.lexsort((both[:, 1], both[:, 0]))
            last_hi, last_lo = both[order[need - 1]]
            keep = (both[:, 0] < last_hi) | ((both[:, 0] == last_hi) & (both[:, 1] <= last_lo))
            codes = codes[keep]
    return heapq.nsmallest(need, codes.tolist(), key=key)


def _one_of(values: npt.NDArray[Any], wanted: Sequence[int]) -> npt.NDArray[np.bool_]:
    """``np.isin(values, wanted)``; a comparison per value when they are few (np.isin
    finds the column's minimum and maximum and builds a table first: three passes over
    a million codes for the one address of "what did 10.0.0.5 do?")."""
    if len(wanted) <= 4:
        out = np.zeros(len(values), dtype=np.bool_)
        for v in wanted:
            out |= values == v
        return out
    return np.isin(values, wanted)
