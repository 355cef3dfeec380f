"""What ``mld watch`` hands its Watcher, built from the config: the analyser and the
retrain hook.

:func:`detection_analyser` runs one capture file through the whole offline detection
path (detector.analysis.scored_events: the sniffer's flow engine and pipeline, the
shipped forests, what ``mld rag import`` runs) and reports how far the file was read.
:func:`anomaly_retrain` trains the anomaly model again on the event store the watcher
writes. The Watcher (watch/service.py) takes both as plain callables, so tests hand it
their own. The detector and the anomaly trainer are imported when a factory is called,
not when the ``mld`` parser is built. Both take the sections of the config they use, not
the whole-house MldConfig (docs/ARCHITECTURE.md, "Layering": watch/cli.py picks them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from base.errors import MldError
from proto.events_pb2 import ScoredEvent
from sniffer.sources import RejectedFile
from watch.service import Analysis, RetrainHook, RetrainResult

if TYPE_CHECKING:
    from detector.config import AnomalyConfig, DetectorConfig
    from detector.scoring import Scorer
    from sniffer.config import SnifferConfig

__all__ = ["Retrained", "anomaly_retrain", "detection_analyser"]

log = logging.getLogger(__name__)


def anomaly_retrain(
    anomaly: AnomalyConfig, db: Path, model_dir: Path, model_cache_dir: str | None
) -> RetrainHook:
    """The anomaly model's retrain (:func:`anomaly.train.retrain`) on the event store
    ``db`` into ``model_dir``: the window is read, a model fitted, compiled and judged
    against the serving one, then swapped in or refused (anomaly/README.md)."""
    from anomaly.train import retrain

    def hook(reason: str) -> RetrainResult:
        log.info("anomaly retrain: %s", reason)
        decision = retrain(anomaly, db, model_dir, model_cache_dir)
        return Retrained(
            decision.action == "swap", f"{decision.action}: {decision.reason}",
            decision.version or None,
        )  # fmt: skip

    return hook


@dataclass(frozen=True)
class Retrained:
    """A RetrainResult made from what the retrain returned."""

    accepted: bool
    reason: str
    version: str | None


def detection_analyser(
    detector: DetectorConfig,
    sniffer: SnifferConfig,
    sensor: str,
    *,
    scorer: Scorer | None = None,
) -> Callable[[Path], Analysis]:
    """One file through the offline detection path (what ``mld rag import`` runs), scored
    by ``scorer`` (default: the shipped bundle with ``detector``'s thresholds)."""
    from detector.analysis import scored_events
    from detector.scoring import default_scorer

    if scorer is None:
        scorer = default_scorer(detector)

    def analyse(path: Path) -> Analysis:
        events: list[ScoredEvent] = []
        rejected: list[RejectedFile] = []
        try:
            for batch in scored_events(
                [path], sniffer, scorer, sensor_id=sensor, rejected=rejected
            ):
                events.extend(batch)
        except (MldError, OSError, ValueError) as exc:
            return Analysis([], f"{type(exc).__name__}: {exc}", "error")
        if rejected:
            return Analysis(events, rejected[0].message, rejected[0].reason)
        return Analysis(events)

    return analyse
