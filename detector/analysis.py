"""The whole detection path in one process, on capture files: what ``mld detector analyze`` runs.

native flow engine -> sniffer pipeline (source context, fast rules) -> feature matrix ->
family forests -> scores. The sniffer and detector services run the same steps, split by
the transport; here the columns go straight from one to the next (no FlowRecord is
serialized), which is what makes offline analysis fast. Training and evaluation read
captures through this module too, so their features are exactly the live ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from detector.features import columns_from_flows, feature_matrix
from detector.scoring import Scorer, Scores
from sniffer.config import SnifferConfig
from sniffer.fast_rules import FastScores
from sniffer.pipeline import FlowPipeline
from sniffer.records import Array, FlowColumns
from sniffer.sources import PcapSource, RejectedFile

__all__ = ["AnalysisStats", "AnalyzedBatch", "analyze_captures"]


@dataclass(frozen=True)
class AnalyzedBatch:
    """One batch of flows: the sniffer's columns, the features and (with a scorer) scores."""

    flows: FlowColumns
    context: dict[str, Array]
    fast: FastScores
    features: npt.NDArray[np.float32]
    scores: Scores | None

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
) -> Iterator[AnalyzedBatch]:
    """Batches of analysed flows from capture files (or folders), in export order.

    Files are read in order through one flow engine and one pipeline, as ``mld sniffer flows``
    does. Unreadable files are skipped and listed in ``stats.rejected``; flows read before
    a mid-file error are kept. ``stats`` (if given) is updated as batches are produced.
    """
    stats = stats if stats is not None else AnalysisStats()
    start = time.perf_counter()
    source = PcapSource(paths, sniffer.capture)
    stats.files = len(source.files)
    pipeline = FlowPipeline(sniffer)

    def run(events: npt.NDArray[np.void], obs: str) -> AnalyzedBatch:
        done = pipeline.process(events, obs, encode=False)
        x = feature_matrix(columns_from_flows(done.flows, done.context))
        scores = scorer.score(x, done.scores.score, done.scores.rule) if scorer else None
        return AnalyzedBatch(done.flows, done.context, done.scores, x, scores)

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
