"""Retrieval: the question's hard filters go to SQL, its words to the text index, and the
numbers an answer may state are computed here, by SQL (or its copy of the columns in
memory), never by the model.

* Filters that leave at most ``_RERANK_MAX`` events: those are read from SQLite (highest
  score first) and ranked by the similarity of their descriptions to the question.
* No filters, or too many events: the text index gives the nearest events, which are
  then checked against the filters in SQL; if too few pass, the highest-scored events
  that match the filters fill the rest.

``Facts`` is what the answer's numbers come from: how many events match, by family,
label, source, destination and port, and the time they span. With the facts' columns in
memory (rag/columns.py, the console) they and the best-first listing come from there,
with SQL's own results; SQL reads only the rows shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from rag.describe import embed_code_bytes, embed_texts, text_codes
from rag.question import Parsed
from rag.store import BlockRow, EventRow, EventStore
from rag.vectors import VectorIndex

__all__ = ["BlockFacts", "Facts", "Retrieval", "block_facts", "facts_for", "retrieve"]

_RERANK_MAX = 5000
_ALERTS = 2


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


@dataclass(frozen=True)
class Facts:
    """Numbers about the events that match a question's filters (computed by SQL)."""

    matching: int
    alerts: int
    by_family: list[tuple[str, int]] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)
    destinations: list[tuple[str, int]] = field(default_factory=list)
    ports: list[tuple[str, int]] = field(default_factory=list)
    span: tuple[float, float] | None = None
    # For a question about addresses: events where it is the source / the destination.
    as_source: int | None = None
    as_destination: int | None = None
    # What the top sources, destinations and ports are counted over: "alerts" (the
    # alerts among the matching events) or "matching" (all of them).
    over: str = "matching"
    # Events where the fast rules and the forests disagree strongly, among the matching.
    divergent: int | None = None

    @property
    def scope(self) -> str:
        """The events the top-N lines count, in words ("the 1 alert")."""
        if self.over == "alerts":
            return f"the {self.alerts} alert{'s' if self.alerts != 1 else ''}"
        return f"the {self.matching} matching event{'s' if self.matching != 1 else ''}"

    def lines(self) -> list[str]:
        def top(items: list[tuple[str, int]]) -> str:
            return ", ".join(f"{v} ({n})" for v, n in items) or "none"

        over = f"(over {self.scope})"
        out = [
            f"matching events: {self.matching}",
            f"of which alerts: {self.alerts} (suspicious or malicious)",
        ]
        if self.by_family:
            out.append(f"alerts by family: {top(self.by_family)} (over the alerts)")
        out.append(f"top sources: {top(self.sources)} {over}")
        out.append(f"top destinations: {top(self.destinations)} {over}")
        out.append(f"top destination ports: {top(self.ports)} {over}")
        if self.as_source is not None:
            out.append(
                f"as source: {self.as_source} events; as destination: {self.as_destination} "
                "(over the matching events)"
            )
        if self.divergent is not None:
            out.append(
                f"divergent (rules and forests disagree): {self.divergent} "
                "(over the matching events)"
            )
        if self.span:
            out.append(
                f"first seen {_when(self.span[0])}, last seen {_when(self.span[1])} "
                "(over the matching events)"
            )
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "matching": self.matching,
            "alerts": self.alerts,
            "alerts_by_family": dict(self.by_family),
            "top_sources": self.sources,
            "top_destinations": self.destinations,
            "top_ports": self.ports,
            "first_ts": self.span[0] if self.span else None,
            "last_ts": self.span[1] if self.span else None,
            "as_source": self.as_source,
            "as_destination": self.as_destination,
            "top_over": self.over,
            "divergent": self.divergent,
        }


@dataclass(frozen=True)
class BlockFacts:
    """The firewall's decisions a question asks about (the RAG store's blocks table)."""

    ask: str
    now: float
    decisions: list[BlockRow]  # in scope (addresses, time), oldest first
    active: list[BlockRow]  # latest block/extend per prefix still within its TTL at now
    total_stored: int  # decisions stored at all (0: no agent sends them here)
    scope: str

    @property
    def blocked(self) -> list[BlockRow]:
        return [d for d in self.decisions if d.action == "block" and not d.refused]

    @property
    def unblocked(self) -> list[BlockRow]:
        return [d for d in self.decisions if d.action == "unblock"]

    @property
    def refused(self) -> list[BlockRow]:
        return [d for d in self.decisions if d.refused]

    def lines(self) -> list[str]:
        addrs = sorted({d.network for d in self.blocked})
        refused: dict[str, int] = {}
        for d in self.refused:
            refused[d.outcome] = refused.get(d.outcome, 0) + 1
        now = ", ".join(f"{b.network} until {_when(b.expires_ts)}" for b in self.active)
        extended = sum(1 for d in self.decisions if d.action == "extend" and not d.refused)
        out = [
            f"firewall decisions stored: {self.total_stored} (all time)",
            f"decisions in scope: {len(self.decisions)} ({self.scope})",
            f"blocks: {len(self.blocked)} of {len(addrs)} address(es): "
            f"{', '.join(addrs[:8]) or 'none'} ({self.scope})",
            f"extensions: {extended}; unblocks: {len(self.unblocked)} ({self.scope})",
            "refused: "
            + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none")
            + f" ({self.scope})",
            f"blocked now ({_when(self.now)}): {now or 'none'}",
        ]
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "ask": self.ask,
            "scope": self.scope,
            "total_stored": self.total_stored,
            "decisions": [d.to_json() for d in self.decisions[-50:]],
            "active": [d.to_json() for d in self.active],
        }


@dataclass(frozen=True)
class Retrieval:
    parsed: Parsed
    rows: list[EventRow]
    facts: Facts
    via: str  # "sql", "sql+text", "text" or "text+sql": how the rows were found
    # For a question about the firewall's decisions.
    blocks: BlockFacts | None = None


def facts_for(store: EventStore, parsed: Parsed) -> Facts:
    f = parsed.filters
    matching = store.count(f)
    alert_filter = replace(f, min_label=max(f.min_label, _ALERTS))
    alerts = matching if f.min_label >= _ALERTS else store.count(alert_filter)
    # Who/where figures among the alerts when the question is about alerts or a family,
    # among all matching events otherwise (a benign client's top destinations).
    over_alerts = not (f.min_label or not alerts)
    base = alert_filter if over_alerts else f
    as_src = as_dst = None
    addrs = f.addrs or f.src or f.dst
    if parsed.intent == "about" and addrs:
        as_src = store.count(replace(f, addrs=(), src=addrs))
        as_dst = store.count(replace(f, addrs=(), dst=addrs))
    return Facts(
        matching=matching,
        alerts=alerts,
        by_family=store.group("family", alert_filter) if alerts else [],
        sources=store.group("src", base),
        destinations=store.group("dst", base),
        ports=store.group("dst_port", base),
        span=store.span(f),
        as_source=as_src,
        as_destination=as_dst,
        over="alerts" if over_alerts or f.min_label >= _ALERTS else "matching",
        divergent=store.count(replace(f, divergent=True))
        if f.divergent or parsed.intent == "about"
        else None,
    )


def _block_scope(parsed: Parsed) -> str:
    f = parsed.filters
    parts = []
    addrs = f.addrs + f.src + f.dst
    if addrs:
        parts.append("address " + ", ".join(addrs))
    if f.since_ts is not None:
        parts.append(f"since {_when(f.since_ts)}")
    if f.until_ts is not None:
        parts.append(f"before {_when(f.until_ts)}")
    return "; ".join(parts) or "all time"


def block_facts(store: EventStore, parsed: Parsed, now: float) -> BlockFacts:
    """The decisions about the question's addresses in its time window, and what is
    blocked at ``now`` (the latest applied or dry-run block, extend or unblock per
    prefix decides)."""
    f = parsed.filters
    addrs = f.addrs + f.src + f.dst
    decisions = store.blocks(addrs=addrs, since_ts=f.since_ts, until_ts=f.until_ts)
    latest: dict[str, BlockRow] = {}
    for d in store.blocks(addrs=addrs, until_ts=now + 1e-6):
        if d.action in ("block", "extend", "unblock") and not d.refused:
            latest[d.network] = d
    active = [d for d in latest.values() if d.action in ("block", "extend") and d.expires_ts > now]
    total = store.count_blocks()
    return BlockFacts(parsed.blocks or "list", now, decisions, active, total, _block_scope(parsed))


def retrieve(
    store: EventStore,
    text_index: VectorIndex | None,
    parsed: Parsed,
    k: int,
    now: float | None = None,
) -> Retrieval:
    """The events and facts for ``parsed`` (``now``: when it is asked, for what is
    blocked now; default the clock)."""
    if parsed.intent == "blocks":
        return _retrieve_blocks(store, parsed, k, time.time() if now is None else now)
    facts = facts_for(store, parsed)
    f = parsed.filters
    query = embed_texts([parsed.text])[0]
    if (not f.empty and facts.matching <= _RERANK_MAX) or text_index is None or not len(text_index):
        ranked = store.ranking(f, limit=_RERANK_MAX)
        if len(ranked) > k:
            blobs = [
                c if c is not None else text_codes([d or ""])[0].tobytes() for _, _, c, d in ranked
            ]
            sims = embed_code_bytes(blobs) @ query
            # Score first when the words say little (a count, a who), words first otherwise.
            order = np.lexsort((-np.array([s for _, s, _, _ in ranked]), -np.round(sims, 2)))
            ranked = [ranked[i] for i in order[:k]]
        rows = store.get([i for i, _, _, _ in ranked])
        return Retrieval(parsed, rows, facts, "sql" if f.empty else "sql+text")
    hits = text_index.search(query, max(k * 20, 200))
    found = store.rows(replace(f, ids=tuple(i for i, _ in hits)), limit=len(hits))
    rank = {i: n for n, (i, _) in enumerate(hits)}
    rows = sorted(found, key=lambda r: rank[r.id])[:k]
    via = "text"
    if len(rows) < k:
        have = {r.id for r in rows}
        rows += [r for r in store.rows(f, limit=k * 2) if r.id not in have][: k - len(rows)]
        via = "text+sql"
    return Retrieval(parsed, rows, facts, via)


def _retrieve_blocks(store: EventStore, parsed: Parsed, k: int, now: float) -> Retrieval:
    """A question about the firewall's decisions: the decisions, and the events of the
    verdicts behind them (what the firewall acted on)."""
    blocks = block_facts(store, parsed, now)
    wanted = blocks.active if parsed.blocks == "now" else blocks.blocked or blocks.decisions
    verdicts = [v for d in reversed(wanted) for v in d.verdict_ids.split()]
    nets = list(dict.fromkeys(d.addr for d in reversed(wanted)))
    rows = store.events_of_verdicts(list(dict.fromkeys(verdicts))[: k * 4], nets[:k], limit=k)
    f = parsed.filters
    facts = Facts(matching=len(blocks.decisions), alerts=0, span=None)
    if not rows and wanted:
        # The verdicts' events are not here (another store, or older): the address's
        # malicious events around the decisions stand in for them.
        rows = store.rows(replace(f, addrs=tuple(nets[:k]), src=(), dst=(), min_label=3), limit=k)
    return Retrieval(parsed, rows, facts, "blocks", blocks)
