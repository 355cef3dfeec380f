"""The decision log: every firewall decision in SQLite, kept across restarts.

One row per decision (time, prefix, action, reason, family, score, verdict ids, backend,
outcome, TTL, expiry). ``live_blocks(now)`` rebuilds the blocks to restore after a
restart: per prefix, the latest applied decision, when it is a block or extend whose
expiry is still ahead. The file uses WAL mode, so ``mld firewall list`` can read it while
the agent writes; ``schema_version`` says which layout it holds::

    log = DecisionLog(cfg.firewall.decision_log_path(cfg.node.state_dir))
    log.record(decision, backend="xdp", outcome="applied")
    policy.restore(log.live_blocks(time.time()))
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from base.errors import FirewallError
from firewall.policy import ActiveBlock, Decision

__all__ = ["SCHEMA_VERSION", "Backend", "DecisionLog", "LogEntry"]

SCHEMA_VERSION = 1
Backend = Literal["xdp", "nftables", "none"]
# Outcomes whose blocks are in the kernel; dry_run ones are restored only when asked.
_APPLIED = ("applied", "pending")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,             -- when decided, seconds since the epoch
    addr TEXT NOT NULL,           -- network address of the prefix
    prefix_len INTEGER NOT NULL,  -- bits; 32 or 128 for one address
    action TEXT NOT NULL,         -- block, extend, unblock, skip, reject
    reason TEXT NOT NULL,
    family TEXT NOT NULL,
    final_score REAL NOT NULL,
    verdict_ids TEXT NOT NULL,    -- JSON list of Verdict.verdict_id
    backend TEXT NOT NULL,        -- xdp, nftables, none
    outcome TEXT NOT NULL,        -- applied, failed, dry_run, allowlisted, rate_limited, ...
    ttl_s INTEGER NOT NULL,       -- 0 for unblock, skip, reject
    expires_ts REAL NOT NULL      -- seconds since the epoch; 0 for unblock, skip, reject
);
CREATE INDEX IF NOT EXISTS decisions_prefix ON decisions (addr, prefix_len, id);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
"""

_COLUMNS = (
    "id, ts, addr, prefix_len, action, reason, family, final_score, verdict_ids, backend, "
    "outcome, ttl_s, expires_ts"
)


@dataclass(frozen=True)
class LogEntry:
    """One recorded decision."""

    id: int
    ts: float
    addr: str
    prefix_len: int
    action: str
    reason: str
    family: str
    final_score: float
    verdict_ids: tuple[str, ...]
    backend: str
    outcome: str
    ttl_s: int
    expires_ts: float


class DecisionLog:
    """The SQLite decision log at ``path`` (created with its folder when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        except (OSError, sqlite3.Error) as exc:
            raise FirewallError(
                f"cannot open the decision log {self.path}: {exc}; check that the folder "
                "is writable (firewall.decision_log, node.state_dir)"
            ) from exc
        if row is not None and row[0] != SCHEMA_VERSION:
            self._db.close()
            raise FirewallError(
                f"decision log {self.path} has schema version {row[0]}, this ML Defender "
                f"writes version {SCHEMA_VERSION}: move the file aside to start a new log"
            )

    def record(self, decision: Decision, backend: Backend, outcome: str | None = None) -> int:
        """Store ``decision`` as carried out by ``backend``; ``outcome`` (applied, failed,
        ...) replaces the policy's. Returns the row id."""
        values = (
            decision.decided_ts,
            decision.addr,
            decision.prefix_len,
            decision.action,
            decision.reason,
            decision.family,
            decision.final_score,
            json.dumps(list(decision.verdict_ids)),
            backend,
            outcome or decision.outcome,
            decision.ttl_s,
            decision.expires_ts,
        )
        cursor = self._run(
            "INSERT INTO decisions (ts, addr, prefix_len, action, reason, family, final_score,"
            " verdict_ids, backend, outcome, ttl_s, expires_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        return int(cursor.lastrowid or 0)

    def history(self, limit: int = 100, address: str | None = None) -> list[LogEntry]:
        """The latest ``limit`` decisions, newest first; only ``address``'s when given
        (an address or "addr/prefix_len")."""
        if address is None:
            cursor = self._run(
                f"SELECT {_COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?", (limit,)
            )
        else:
            addr, _, plen = address.partition("/")
            where = "addr = ?" + (" AND prefix_len = ?" if plen else "")
            args: tuple[object, ...] = (addr, int(plen), limit) if plen else (addr, limit)
            cursor = self._run(
                f"SELECT {_COLUMNS} FROM decisions WHERE {where} ORDER BY id DESC LIMIT ?", args
            )
        return [_entry(row) for row in cursor.fetchall()]

    def live_blocks(self, now: float, include_dry_run: bool = False) -> list[ActiveBlock]:
        """Blocks to restore: per prefix, the latest applied block/extend/unblock is a
        block or extend expiring after ``now``. ``since`` is the start of that block."""
        outcomes = (*_APPLIED, "dry_run") if include_dry_run else _APPLIED
        marks = ", ".join("?" * len(outcomes))
        cursor = self._run(
            f"""
            SELECT {_COLUMNS},
                   (SELECT MAX(b.ts) FROM decisions b
                     WHERE b.addr = d.addr AND b.prefix_len = d.prefix_len
                       AND b.action = 'block' AND b.outcome IN ({marks}) AND b.id <= d.id)
            FROM decisions d
            WHERE d.id IN (SELECT MAX(id) FROM decisions
                           WHERE action IN ('block', 'extend', 'unblock')
                             AND outcome IN ({marks})
                           GROUP BY addr, prefix_len)
              AND d.action IN ('block', 'extend') AND d.expires_ts > ?
            ORDER BY d.id
            """,
            (*outcomes, *outcomes, now),
        )
        blocks = []
        for row in cursor.fetchall():
            entry = _entry(row[:-1])
            since = row[-1] if row[-1] is not None else entry.ts
            blocks.append(
                ActiveBlock(
                    entry.addr,
                    entry.prefix_len,
                    entry.reason,
                    entry.family,
                    entry.final_score,
                    entry.verdict_ids,
                    float(since),
                    entry.expires_ts,
                )
            )
        return blocks

    def prune(self, older_than: float) -> int:
        """Delete decisions made before ``older_than`` except, per prefix and outcome,
        the latest block/extend/unblock (what ``live_blocks`` reads). Returns the count."""
        cursor = self._run(
            """
            DELETE FROM decisions WHERE ts < ? AND id NOT IN (
                SELECT MAX(id) FROM decisions WHERE action IN ('block', 'extend', 'unblock')
                GROUP BY addr, prefix_len, outcome)
            """,
            (older_than,),
        )
        return cursor.rowcount

    def close(self) -> None:
        """Close the file; later calls raise FirewallError."""
        self._db.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise FirewallError(
                f"decision log {self.path}: {exc}; check the disk and the file's permissions"
            ) from exc


def _entry(row: Sequence[Any]) -> LogEntry:
    (id_, ts, addr, plen, action, reason, family, score, ids, backend, outcome, ttl, exp) = row
    return LogEntry(
        int(id_),
        float(ts),
        str(addr),
        int(plen),
        str(action),
        str(reason),
        str(family),
        float(score),
        tuple(json.loads(str(ids))),
        str(backend),
        str(outcome),
        int(ttl),
        float(exp),
    )
