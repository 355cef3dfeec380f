"""A small real event store for the RAG tests: a masscan TCP scan and a benign capture
(reddit.pcap) through the real detection path, at known times."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import pytest

from config import load_config
from detector.analysis import scored_events
from detector.scoring import default_scorer
from proto.events_pb2 import ScoredEvent
from rag.config import RagConfig
from rag.indexed_store import RagStore
from rag.store import EventStore, Filters
from tests.support import SHARED_DATA

SCAN = SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap"
BENIGN = SHARED_DATA / "pcaps/ndpi/reddit.pcap"
SCANNER, SCANNED = "172.31.15.102", "198.124.152.15"


def utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


SCAN_AT = utc("2026-11-21T10:00:00Z")
BENIGN_AT = utc("2026-11-21T08:00:00Z")
NOW = utc("2026-11-21T10:30:00Z")


def build_store(path: Path, cfg: RagConfig | None = None) -> RagStore:
    if not SCAN.exists() or not BENIGN.exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    mcfg = load_config()
    scorer = default_scorer(mcfg.detector)
    rag = RagStore(path, cfg or RagConfig())
    rag.open_indexes()
    for capture, at in ((BENIGN, BENIGN_AT), (SCAN, SCAN_AT)):
        for events in scored_events([capture], mcfg.sniffer, scorer, shift_to=at):
            rag.ingest(events, "det-test")
    rag.save()
    return rag


def stored_events(path: Path, n: int = 1200) -> list[ScoredEvent]:
    """The first ``n`` events of a store built at ``path`` (events to ingest again)."""
    source = build_store(path)
    try:
        return [e for e in (source.store.event(i) for i in range(1, n + 1)) if e is not None]
    finally:
        source.close()


def ids_held(index: Any) -> list[int]:
    """Every id an IVF index holds (duplicates kept), read from its inverted lists."""
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    out: list[int] = []
    for n in range(ivf.nlist):
        size = lists.list_size(n)
        if size:
            out += faiss.rev_swig_ptr(lists.get_ids(n), size).tolist()
    return out


def sql_answers(store: EventStore, filters: Sequence[Filters]) -> list[object]:
    """What the store says for each filter: count, span, groups, rows, ranking."""
    out: list[object] = []
    for f in filters:
        out.append(store.count(f))
        out.append(store.span(f))
        out += [store.group(c, f, limit=5) for c in ("src", "dst", "dst_port", "proto")]
        out.append([r.id for r in store.rows(f, limit=50)])
        out.append(store.ranking(f, limit=50))
    return out


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RagStore]:
    rag = build_store(tmp_path_factory.mktemp("rag") / "events.sqlite")
    try:
        yield rag
    finally:
        rag.close()
