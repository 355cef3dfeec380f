"""The training window is bounded: with ten times more history in the store, training
reads and fits the same rows (the newest window_flows within window_s), never more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.window import read_window
from proto.events_pb2 import LABEL_MALICIOUS, ScoredEvent
from rag.store import EventStore
from tests.anomaly.support import benign_captures, capture_events, fill_store

WINDOW = 1000


@pytest.fixture(scope="module")
def recent() -> list[ScoredEvent]:
    """Real flows of the nDPI captures, the newest traffic of every store below."""
    paths = benign_captures()
    return capture_events(paths, start=1.7e9, spacing=100.0)


def older_copies(events: list[ScoredEvent], times: int) -> list[ScoredEvent]:
    """``times`` copies of ``events``, each moved a day further into the past: history."""
    out = []
    for k in range(times, 0, -1):
        for e in events:
            old = ScoredEvent()
            old.CopyFrom(e)
            old.record.first_ts_ns -= k * 86400 * 10**9
            old.record.last_ts_ns -= k * 86400 * 10**9
            out.append(old)
    return out


def window_of(db: Path, **kw: float) -> tuple[np.ndarray, int]:
    store = EventStore(db, readonly=True)
    try:
        read = sum(len(c) for c in store.recent(window_s=kw.get("window_s", 1e9), limit=WINDOW))
    finally:
        store.close()
    w = read_window(
        db,
        window_flows=WINDOW,
        window_s=kw.get("window_s", 1e9),
        holdout_fraction=0.1,
        seed=1,
    )
    return np.concatenate([w.fit, w.holdout]), read


def test_more_history_reads_the_same_window(recent: list[ScoredEvent], tmp_path: Path) -> None:
    assert len(recent) > WINDOW
    small, big = tmp_path / "small.sqlite", tmp_path / "big.sqlite"
    fill_store(small, recent)
    fill_store(big, older_copies(recent, 10) + recent)
    x_small, read_small = window_of(small)
    x_big, read_big = window_of(big)
    assert read_small == read_big == WINDOW  # the store is never read past the window
    assert x_small.shape == x_big.shape == (WINDOW, 54)
    assert np.array_equal(x_small, x_big)  # the same, newest flows

    # window_s bounds it too: one hour back holds only the newest captures' flows.
    newest = max(e.record.first_ts_ns for e in recent) / 1e9
    in_hour = sum(e.record.first_ts_ns / 1e9 >= newest - 3600 for e in recent)
    x_hour, _ = window_of(big, window_s=3600.0)
    assert len(x_hour) == min(in_hour, WINDOW) < WINDOW


def test_malicious_flows_stay_out_of_the_window(recent: list[ScoredEvent], tmp_path: Path) -> None:
    events = []
    for i, e in enumerate(recent):
        copy = ScoredEvent()
        copy.CopyFrom(e)
        if i % 2:
            copy.verdict.label = LABEL_MALICIOUS
        events.append(copy)
    db = tmp_path / "events.sqlite"
    fill_store(db, events)
    w = read_window(db, window_flows=10**6, window_s=1e9, holdout_fraction=0.2, seed=1)
    kept = sum(e.verdict.label != LABEL_MALICIOUS for e in events)
    assert 0 < kept <= (len(events) + 1) // 2 and w.rows == kept
    assert 0.1 < len(w.holdout) / w.rows < 0.3
