"""The training window: the newest stored flows, as the forests' feature matrix.

The window is read from the RAG event store (rag/store.py): at most
``anomaly.window_flows`` events that started within ``anomaly.window_s`` of the newest
stored flow, newest first through the time index, parsed in batches into the 54 features
of detector/features.py. Flows the detector labelled malicious (blocked attacks) are left
out, so an attack that was stopped does not become normal; suspicious ones stay in, or an
unseen service that raised anomaly alerts could never be learned. Time and memory follow
the window, not the history: the store is never read past ``window_flows`` rows.

A seeded random ``holdout_fraction`` of the window is held back from fitting, to judge the
new model against the running one (anomaly/train.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from detector.features import FEATURES, columns_from_records, feature_matrix
from proto.events_pb2 import LABEL_MALICIOUS, ScoredEvent
from rag.store import EventStore

__all__ = ["Window", "read_window"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Window:
    """The flows of one training window, split into fitting rows and held-back rows."""

    fit: F32
    holdout: F32
    first_ts: float  # oldest flow start in the window, s since the epoch (0 if empty)
    last_ts: float  # newest flow start

    @property
    def rows(self) -> int:
        return len(self.fit) + len(self.holdout)

    def to_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "fit_rows": len(self.fit),
            "holdout_rows": len(self.holdout),
            "first_ts": round(self.first_ts, 3),
            "last_ts": round(self.last_ts, 3),
        }


def read_window(
    db: Path | str,
    *,
    window_flows: int,
    window_s: float,
    holdout_fraction: float,
    seed: int,
    until_ts: float | None = None,
) -> Window:
    """The window of the event store ``db`` (opened read-only), split for fitting."""
    store = EventStore(db, readonly=True)
    parts: list[F32] = []
    first = last = 0.0
    try:
        for chunk in store.recent(
            window_s=window_s,
            limit=window_flows,
            until_ts=until_ts,
            exclude_labels=(LABEL_MALICIOUS,),
        ):
            records = [ScoredEvent.FromString(blob).record for _, blob in chunk]
            parts.append(feature_matrix(columns_from_records(records)))
            if not last:
                last = chunk[0][0]
            first = chunk[-1][0]
    finally:
        store.close()
    x = np.concatenate(parts) if parts else np.zeros((0, len(FEATURES)), dtype=np.float32)
    rng = np.random.default_rng(seed)
    held = rng.random(len(x)) < holdout_fraction
    return Window(fit=x[~held], holdout=x[held], first_ts=first, last_ts=last)
