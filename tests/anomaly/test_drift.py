"""Drift with real live traffic: a new benign service starts in a namespace pair.

Phase 1 is web traffic only (HTTP over TCP to port 8080), phase 2 adds a new service (UDP
request/response on port 47000) among the web flows, phase 3 is web only again. The
traffic is real (Python clients and servers in two namespaces), captured by tcpdump and
turned into flows by the real flow engine and scored by the shipped bundle (detector.analysis),
then stored in time order in an event store while `retrain` runs at checkpoints, as
`mld anomaly run` would. The share of the new service's flows the serving model alerts
on is high after phase 1, falls as the window takes in the new service, and rises again
once it has left the window (forgotten).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.train import retrain
from anomaly.versions import ModelDir
from config import load_config
from detector.bundle import load_bundle
from detector.config import AnomalyConfig
from detector.families import ANOMALY as ANOMALY_FAMILY
from detector.scoring import AnomalyScoring, Scorer
from proto.events_pb2 import LABEL_SUSPICIOUS
from tests.anomaly.support import (
    NEW_PORT,
    capture_events,
    features_of,
    fill_store,
    live_drift_capture,
)
from tests.support import NetnsPair

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WINDOW = 400


def test_new_service_alerts_then_is_learned_then_forgotten(
    anom_pair: NetnsPair, tmp_path: Path
) -> None:
    pcap = tmp_path / "drift.pcap"
    live_drift_capture(anom_pair, pcap, n1=350, n2web=150, n2new=200, n3=600)
    events = sorted(
        capture_events([pcap], start=1.7e9, spacing=1e6), key=lambda e: e.record.first_ts_ns
    )
    is_new = [e.record.dst_port == NEW_PORT for e in events]
    first_new = is_new.index(True)
    last_new = len(is_new) - 1 - is_new[::-1].index(True)
    new_flows = [e for e, n in zip(events, is_new, strict=True) if n]
    assert len(new_flows) >= 150 and first_new >= 300 and len(events) - last_new > WINDOW

    # max_worse is widened here: the refusal gate has its own test (tests/anomaly/test_train.py),
    # and this one is about the window learning and forgetting. With ~40 held-back flows of live
    # traffic the first model flags 0-7% of them on an idle machine, but 17% (7 of 41) once in
    # CI under load, which the default gate (5% + two standard errors over 0%) refused.
    cfg = AnomalyConfig(
        enabled=True,
        window_flows=WINDOW,
        min_flows=100,
        n_trees=50,
        holdout_fraction=0.1,
        max_worse=0.3,
    )
    db, models = tmp_path / "events.sqlite", ModelDir(tmp_path / "anomaly")
    dcfg = load_config().detector
    bundle = load_bundle()
    x_new = features_of(new_flows)

    def alert_share() -> float:
        """Share of the new service's flows the serving model makes anomaly alerts of,
        through the detector's Scorer."""
        model = models.load_current(tmp_path / "cache")
        scoring = AnomalyScoring(model, cfg.alert_threshold, cfg.block)
        scores = Scorer(bundle, dcfg.thresholds, 5, scoring).score(x_new)
        col = scores.families.index(ANOMALY_FAMILY)
        alerts = (scores.family_scores[:, col] >= cfg.alert_threshold) & (
            scores.label >= LABEL_SUSPICIOUS
        )
        return float(np.mean(alerts))

    stored = 0

    def advance_to(upto: int) -> None:
        nonlocal stored
        fill_store(db, events[stored:upto])
        stored = upto

    def train() -> float:
        decision = retrain(cfg, db, models.path, tmp_path / "cache")
        assert decision.action == "swap", decision.summary()
        return alert_share()

    shares: list[float] = []
    advance_to(first_new)  # phase 1: web only
    shares.append(train())
    # Phase 2 in three steps: the window takes in more and more of the new service.
    span = last_new + 1 - first_new
    for step in (1, 2, 3):
        advance_to(first_new + span * step // 3)
        shares.append(train())
    # Phase 3: web only until the new service has left the window.
    advance_to(len(events))
    shares.append(train())
    print("flows", len(events), "new", len(new_flows), "first", first_new, "last", last_new)
    print("alert share of the new service per training:", [round(s, 3) for s in shares])

    before, *learning, forgotten = shares
    assert before >= 0.8, shares
    assert max(learning) < before / 2, shares  # falling as the window learns
    assert learning[-1] <= 0.2 and learning[-1] <= learning[0] + 0.05, shares
    assert forgotten >= 0.8, shares
    history = models.history()
    assert [d["action"] for d in history] == ["swap"] * 5
    assert all(isinstance(d["window"], dict) for d in history)
