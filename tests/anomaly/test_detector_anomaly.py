"""The anomaly family in the detector: how it labels, hot swaps under load without losing
a batch, and a model that does not load is refused while the old one keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly.train import train_on
from anomaly.versions import ModelDir
from anomaly.window import Window
from detector.bundle import load_bundle
from detector.config import AnomalyConfig, ThresholdsConfig
from detector.families import ANOMALY as ANOMALY_FAMILY
from detector.scoring import AnomalyScoring, Scorer
from proto.events_pb2 import LABEL_MALICIOUS, LABEL_SUSPICIOUS, EventBatch
from tests.anomaly.support import benign_captures, capture_events, features_of
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import (
    SCAN_PCAP,
    Harness,
    Streamer,
    capture_records,
    collect,
    events_of,
)
from tests.support import wait_for

CFG = AnomalyConfig(enabled=True, min_flows=100, n_trees=30)


@pytest.fixture(scope="module")
def benign_x() -> np.ndarray:
    paths = benign_captures()
    return features_of(capture_events(paths, start=1.7e9, spacing=100.0))


def publish(md: ModelDir, x: np.ndarray, seed: int, cache: Path) -> str:
    """Train a model on ``x`` and make it the serving one (via train_on's judge)."""
    cfg = AnomalyConfig(enabled=True, min_flows=100, n_trees=30, seed=seed, max_worse=1.0)
    cut = len(x) // 10
    decision = train_on(Window(x[cut:], x[:cut], 0.0, 0.0), cfg, md, cache)
    assert decision.action == "swap", decision.summary()
    return decision.version


def test_anomaly_family_alerts_and_blocks_only_when_allowed(
    tiny_bundle: TinyBundle, benign_x: np.ndarray, tmp_path: Path
) -> None:
    md = ModelDir(tmp_path / "anomaly")
    publish(md, benign_x, 1, tmp_path / "cache")
    model = md.load_current(tmp_path / "cache")
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    thresholds = ThresholdsConfig(alert=0.5, block=0.55)
    x = np.concatenate([benign_x, features_of(capture_events([SCAN_PCAP], start=1.8e9))])
    base = Scorer(bundle, thresholds).score(x)
    alert = Scorer(bundle, thresholds, 5, AnomalyScoring(model, 0.5)).score(x)
    block = Scorer(bundle, thresholds, 5, AnomalyScoring(model, 0.5, block=True)).score(x)

    a = model.score(x)
    assert alert.families == (*base.families, ANOMALY_FAMILY)
    assert np.array_equal(alert.family_scores[:, -1], a)
    assert np.array_equal(alert.family_scores[:, :-1], base.family_scores)
    assert np.array_equal(alert.ml_score, base.ml_score)  # the forests' maximum
    assert alert.model_version == f"{bundle.version}+anomaly-{model.version}"
    hit = a >= 0.5
    assert 0 < hit.sum() < len(x)
    # Alert-only: an anomaly makes a benign flow suspicious, never malicious.
    want = np.where(hit & (base.label < LABEL_SUSPICIOUS), LABEL_SUSPICIOUS, base.label)
    assert np.array_equal(alert.label, want)
    taken = np.array([f == ANOMALY_FAMILY for f in alert.family])
    assert np.array_equal(taken, hit & (a > base.final_score) & (base.label != LABEL_MALICIOUS))
    assert np.array_equal(alert.final_score, np.where(taken, a, base.final_score))
    # With anomaly.block, the flows it took at or above the block threshold are blocked.
    blocked = taken & (a >= 0.55)
    assert blocked.any()
    assert np.array_equal(block.label, np.where(blocked, LABEL_MALICIOUS, alert.label))


def test_disabled_anomaly_changes_nothing(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    md = ModelDir(tmp_path / "anomaly")
    h = Harness(
        tiny_bundle.path,
        tiny_bundle.cache,
        anomaly=AnomalyConfig(enabled=False, model_dir=str(md.path)),
    )
    try:
        assert h.service.scorer.anomaly is None and h.service.anomaly_watcher is None
        assert "anomaly_version" not in h.service.health()[1]
        assert not any(k.startswith("anomaly") for k in h.service.stats())
    finally:
        h.close()


def test_hot_swap_under_load_loses_nothing_and_refuses_a_broken_model(
    tiny_bundle: TinyBundle, benign_x: np.ndarray, tmp_path: Path
) -> None:
    md, cache = ModelDir(tmp_path / "anomaly"), tmp_path / "cache"
    shutil.copytree(tiny_bundle.cache, cache)
    old_version = publish(md, benign_x, 1, cache)
    cfg = AnomalyConfig(enabled=True, model_dir=str(md.path))
    h = Harness(tiny_bundle.path, cache, reload_interval_s=0.05, batch_records=50, anomaly=cfg)
    bundle_version = h.service.model_version
    old = f"{bundle_version}+anomaly-{old_version}"
    assert h.service.anomaly_version == old_version
    streamer = Streamer(h, capture_records(SCAN_PCAP), 50)
    batches: list[EventBatch] = []
    try:
        h.start()
        streamer.start()
        collect(h.rag, lambda got: len(got) >= 5, into=batches)
        # A new model is trained elsewhere (another seed) and published: it compiles in
        # the detector's background thread while batches keep coming.
        new_version = publish(md, benign_x, 2, cache)
        new = f"{bundle_version}+anomaly-{new_version}"
        collect(h.rag, lambda got: got[-1].events[-1].verdict.model_version == new, 30000, batches)

        # The pointer names a damaged folder: refused, the new model keeps serving.
        bad = md.folder("20991231T000000Z-deadbeef")
        shutil.copytree(md.folder(new_version), bad)
        (bad / "model.tl").write_bytes(b"not a treelite checkpoint")
        md.publish(bad.name)
        wait_for(lambda: h.service.stats()["anomaly_refused"] == 1, 10, "a refusal")
        seen = len(batches)
        collect(h.rag, lambda got: len(got) >= seen + 5, into=batches)
        assert h.service.anomaly_version == new_version
        health = h.service.health()[1]
        assert health["anomaly_version"] == new_version
        assert "sha256" in str(health["anomaly_last_refusal"])

        streamer.stop.set()
        streamer.join(10)
        collect(h.rag, lambda got: len(events_of(got)) >= len(streamer.sent), into=batches)
    finally:
        streamer.stop.set()
        h.close()

    events = events_of(batches)
    assert [e.record.SerializeToString() for e in events] == streamer.sent  # none lost
    assert all(len({e.verdict.model_version for e in b.events}) == 1 for b in batches)
    versions = [b.events[0].verdict.model_version for b in batches]
    switch = versions.index(new)
    assert switch > 0 and set(versions[:switch]) == {old} and set(versions[switch:]) == {new}
    assert all([s.family for s in e.verdict.family_scores][-1] == ANOMALY_FAMILY for e in events)
    stats = h.service.stats()
    assert stats["anomaly_reloads"] == 1 and stats["anomaly_refused"] == 1
    assert stats["batches_in"] == len(batches)
