"""Retrieval: the question's hard filters go to SQL, its words to the text index, and the
numbers an answer may state are computed here, by SQL, never by the model.

* Filters that leave at most ``_RERANK_MAX`` events: those are read from SQLite (highest
  score first) and ranked by the similarity of their descriptions to the question.
* No filters, or too many events: the text index gives the nearest events, which are
  then checked against the filters in SQL; if too few pass, the highest-scored events
  that match the filters fill the rest.

``Facts`` is what the answer's numbers come from: how many events match, by family,
label, source, destination and port, and the time they span.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from rag.describe import embed_texts
from rag.question import Parsed
from rag.store import EventRow, EventStore
from rag.vectors import VectorIndex

__all__ = ["Facts", "Retrieval", "facts_for", "retrieve"]

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

    def lines(self) -> list[str]:
        def top(items: list[tuple[str, int]]) -> str:
            return ", ".join(f"{v} ({n})" for v, n in items) or "none"

        out = [f"matching events: {self.matching}", f"of which alerts: {self.alerts}"]
        if self.by_family:
            out.append(f"alerts by family: {top(self.by_family)}")
        out.append(f"top sources: {top(self.sources)}")
        out.append(f"top destinations: {top(self.destinations)}")
        out.append(f"top destination ports: {top(self.ports)}")
        if self.as_source is not None:
            out.append(f"as source: {self.as_source} events; as destination: {self.as_destination}")
        if self.span:
            out.append(f"first seen {_when(self.span[0])}, last seen {_when(self.span[1])}")
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
        }


@dataclass(frozen=True)
class Retrieval:
    parsed: Parsed
    rows: list[EventRow]
    facts: Facts
    via: str  # "sql", "sql+text", "text" or "text+sql": how the rows were found


def facts_for(store: EventStore, parsed: Parsed) -> Facts:
    f = parsed.filters
    matching = store.count(f)
    alert_filter = replace(f, min_label=max(f.min_label, _ALERTS))
    alerts = matching if f.min_label >= _ALERTS else store.count(alert_filter)
    # Who/where figures among the alerts when the question is about alerts or a family,
    # among all matching events otherwise (a benign client's top destinations).
    base = f if (f.min_label or not alerts) else alert_filter
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
    )


def retrieve(
    store: EventStore, text_index: VectorIndex | None, parsed: Parsed, k: int
) -> Retrieval:
    facts = facts_for(store, parsed)
    f = parsed.filters
    query = embed_texts([parsed.text])[0]
    if (not f.empty and facts.matching <= _RERANK_MAX) or text_index is None or not len(text_index):
        rows = store.rows(f, limit=_RERANK_MAX)
        if len(rows) > k:
            sims = embed_texts(r.description for r in rows) @ query
            # Score first when the words say little (a count, a who), words first otherwise.
            order = np.lexsort((-np.array([r.final_score for r in rows]), -np.round(sims, 2)))
            rows = [rows[i] for i in order[:k]]
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
