"""The whole detection path in one process, on capture files: the one offline pipeline.

native flow engine -> sniffer pipeline (source context, fast rules) -> feature matrix ->
family forests -> scores. The sniffer and detector services run the same steps, split by
the transport; here the columns go straight from one to the next (no FlowRecord is
serialized unless asked for), which is what makes offline analysis fast. Every offline
user reads captures through this module, so their features are exactly the live ones:

* :func:`analyze_captures`: batches of columns, features and scores (``mld detector analyze``,
  training and evaluation).
* :func:`scored_events`: the same batches as ScoredEvents, the records and verdicts the
  scoring service would have sent to the RAG store (``mld rag import``, ``mld watch``,
  the anomaly model's tests and benchmarks). ``shift_to`` moves every flow's times so the
  first capture starts at that instant (a demo timeline from old captures; the scores do
  not depend on absolute times). :func:`scored_batches` gives each batch with its events,
  for callers that also label the flows (on the capture's own clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from detector.features import columns_from_flows, feature_matrix
from detector.scoring import Scorer, Scores
from detector.verdicts import add_scored_events, build_verdicts
from proto.events_pb2 import EventBatch, FlowRecord, ScoredEvent, Verdict
from sniffer import dns_windows
from sniffer.capture_file import first_packet_ts
from sniffer.config import SnifferConfig
from sniffer.fast_rules import FastScores
from sniffer.pipeline import FlowPipeline
from sniffer.records import Array, FlowColumns
from sniffer.sources import PcapSource, RejectedFile

__all__ = [
    "AnalysisStats",
    "AnalyzedBatch",
    "analyze_captures",
    "batch_verdicts",
    "scored_batches",
    "scored_events",
]


@dataclass(frozen=True)
class AnalyzedBatch:
    """One batch of flows: the sniffer's columns, the features and (with a scorer) scores;
    with ``records=True``, the serialized FlowRecords too (else an empty list)."""

    flows: FlowColumns
    context: dict[str, Array]
    fast: FastScores
    features: npt.NDArray[np.float32]
    scores: Scores | None
    records: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.flows)


@dataclass
class AnalysisStats:
    """Counters of one run over capture files."""

    files: int = 0
    files_read: int = 0
    packets: int = 0
    bytes: int = 0
    flows: int = 0
    seconds: float = 0.0
    rejected: list[RejectedFile] = field(default_factory=list)

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def analyze_captures(
    paths: Sequence[str | Path],
    sniffer: SnifferConfig,
    scorer: Scorer | None,
    stats: AnalysisStats | None = None,
    *,
    records: bool = False,
) -> Iterator[AnalyzedBatch]:
    """Batches of analysed flows from capture files (or folders), in export order.

    Files are read in order through one flow engine and one pipeline, as ``mld sniffer flows``
    does. Unreadable files are skipped and listed in ``stats.rejected``; flows read before
    a mid-file error are kept. ``stats`` (if given) is updated as batches are produced.
    ``records``: serialize each batch's FlowRecords too (what ScoredEvents carry).
    """
    stats = stats if stats is not None else AnalysisStats()
    start = time.perf_counter()
    source = PcapSource(paths, sniffer.capture)
    stats.files = len(source.files)
    pipeline = FlowPipeline(sniffer, dns_windows.for_source(source, sniffer.context))

    def run(events: npt.NDArray[np.void], obs: str) -> AnalyzedBatch:
        done = pipeline.process(events, obs, encode=records)
        x = feature_matrix(columns_from_flows(done.flows, done.context))
        scores = scorer.score(x, done.scores.score, done.scores.rule) if scorer else None
        return AnalyzedBatch(done.flows, done.context, done.scores, x, scores, done.records)

    def update() -> None:
        engine = source.stats()
        stats.packets = engine.get("packets", 0)
        stats.bytes = engine.get("bytes", 0)
        stats.files_read = source.files_read
        stats.rejected = list(source.rejected)
        stats.seconds = time.perf_counter() - start

    for events, obs in source.batches():
        if len(events) == 0:
            continue
        batch = run(events, obs)
        stats.flows += len(batch)
        update()
        yield batch
    for events, obs in source.flush():
        batch = run(events, obs)
        stats.flows += len(batch)
        update()
        yield batch
    update()


def batch_verdicts(
    batch: AnalyzedBatch, flows: Sequence[FlowRecord], sensor_id: str, *, first_id: int
) -> list[Verdict]:
    """The Verdicts of an analysed batch's flows (its scores and its records, parsed), ids
    ``import-<n>`` from ``first_id`` on."""
    assert batch.scores is not None
    ids = [f"import-{first_id + i}" for i in range(len(flows))]
    return build_verdicts(batch.scores, flows, sensor_id, ids, time.time_ns())


def scored_batches(
    paths: Sequence[str | Path],
    sniffer: SnifferConfig,
    scorer: Scorer,
    *,
    sensor_id: str = "offline",
    shift_to: float | None = None,
    progress: Callable[[int], None] | None = None,
    rejected: list[RejectedFile] | None = None,
) -> Iterator[tuple[AnalyzedBatch, list[ScoredEvent]]]:
    """Each batch of :func:`analyze_captures` with its flows as ScoredEvents.

    The events carry the records (times shifted when ``shift_to`` is given) and their
    verdicts, ids ``import-<n>`` in order; the batch's columns keep the capture's own
    times. ``progress`` is called with the number of events made so far. A file the
    engine could not read, whole or from some offset on, is skipped from there (its flows
    up to the failure are kept) and, once the batches are exhausted, appended to
    ``rejected`` if given (``mld watch`` flags such files).
    """
    stats = AnalysisStats()
    offset: int | None = None if shift_to is not None else 0
    n = 0
    for batch in analyze_captures(paths, sniffer, scorer, stats, records=True):
        assert batch.scores is not None
        flows = [FlowRecord.FromString(b) for b in batch.records]
        if offset is None:
            assert shift_to is not None
            # From the first packet: a flow exported later may have started earlier.
            first = first_packet_ts(Path(paths[0]))
            start_ns = int(first * 1e9) if first is not None else min(r.first_ts_ns for r in flows)
            offset = int(shift_to * 1e9) - start_ns
        if offset:
            for r in flows:
                r.first_ts_ns += offset
                r.last_ts_ns += offset
        verdicts = batch_verdicts(batch, flows, sensor_id, first_id=n)
        out = EventBatch()
        add_scored_events(out, flows, verdicts, sensor_id)
        n += len(flows)
        if progress is not None:
            progress(n)
        yield batch, list(out.events)
    if rejected is not None:
        rejected.extend(stats.rejected)


def scored_events(
    paths: Sequence[str | Path],
    sniffer: SnifferConfig,
    scorer: Scorer,
    *,
    sensor_id: str = "offline",
    shift_to: float | None = None,
    progress: Callable[[int], None] | None = None,
    rejected: list[RejectedFile] | None = None,
) -> Iterator[list[ScoredEvent]]:
    """Batches of ScoredEvents from the flows of ``paths`` (:func:`scored_batches`
    without the columns)."""
    for _, events in scored_batches(
        paths,
        sniffer,
        scorer,
        sensor_id=sensor_id,
        shift_to=shift_to,
        progress=progress,
        rejected=rejected,
    ):
        yield events
