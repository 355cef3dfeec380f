"""The compiled isolation forest equals scikit-learn's on real flows (to 1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tl2cgen

from anomaly.isolation import fit_isolation_forest, isolation_to_treelite
from detector.anomaly_model import PROBE_TOLERANCE, average_path_length, score_from_path
from detector.bundle import RowPredictor
from detector.compile import compile_model
from tests.anomaly.support import benign_captures, capture_events, features_of
from tests.support import SHARED_DATA

ATTACKS = SHARED_DATA / "pcaps/attacks"


@pytest.fixture(scope="module")
def flows() -> tuple[np.ndarray, np.ndarray]:
    """Benign flows (nDPI captures) to fit on; they and attack flows (shared attacks) to score."""
    benign = benign_captures()
    attacks = sorted(ATTACKS.rglob("*.pcap*"))
    x_benign = features_of(capture_events(benign, start=1.7e9, spacing=1e6))
    x_attack = features_of(capture_events(attacks, start=1.8e9, spacing=1e6))
    return x_benign, x_attack


def test_average_path_length_matches_sklearn() -> None:
    from sklearn.ensemble._iforest import _average_path_length

    n = np.array([0, 1, 2, 3, 5, 256, 4096, 10**6])
    assert np.allclose(average_path_length(n), _average_path_length(n), rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_compiled_equals_sklearn_on_real_flows(
    flows: tuple[np.ndarray, np.ndarray], tmp_path: Path, max_features: float
) -> None:
    x_benign, x_attack = flows
    assert len(x_benign) > 1000 and len(x_attack) > 1000
    if max_features == 1.0:
        forest = fit_isolation_forest(x_benign, 40, 256, seed=3)
    else:  # each tree on a subset of the features: feature indices must be mapped back
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(
            n_estimators=40, max_samples=256, max_features=max_features, random_state=3
        ).fit(x_benign)
    checkpoint = tmp_path / "model.tl"
    isolation_to_treelite(forest).serialize(str(checkpoint))
    lib = compile_model(checkpoint, tmp_path / "cache")

    # Real flows, and rows placed exactly on split thresholds (the <= edge).
    x = np.concatenate([x_benign, x_attack])
    tree = forest.estimators_[0].tree_
    node = int(np.flatnonzero(tree.children_left >= 0)[0])
    feat = int(forest.estimators_features_[0][tree.feature[node]])
    edge = np.repeat(x_benign[:1], 2, axis=0)
    edge[0, feat] = np.float32(tree.threshold[node])
    edge[1, feat] = np.nextafter(np.float32(tree.threshold[node]), np.float32(np.inf))
    x = np.concatenate([x, edge])

    want = -forest.score_samples(x)
    path = tl2cgen.Predictor(lib).predict(tl2cgen.DMatrix(x, dtype="float32")).reshape(-1)
    got = score_from_path(path, forest.max_samples_)
    assert float(np.max(np.abs(got - want))) < PROBE_TOLERANCE

    # The row-by-row path (small batches in the detector) gives the same.
    rows = np.zeros(16, dtype=np.float32)
    RowPredictor(lib)(np.array(x[:16], dtype=np.float32, order="C"), rows)
    assert np.array_equal(rows, path[:16].astype(np.float32))
