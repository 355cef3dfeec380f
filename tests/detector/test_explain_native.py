"""The explanations made in C (native/scoring.c, Scorer._explain_rows) are NumPy's, bit for bit.

The reference is the NumPy code the explanations were made with before
(``Scorer._top_numpy``, argpartition then a stable argsort, run on the whole batch at
once): indices, values and weight shares must be equal, including the order NumPy gives
equal weights, on real captures and on random matrices built to tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from config import load_config
from detector.analysis import analyze_captures
from detector.bundle import load_bundle
from detector.features import FEATURES
from detector.scoring import Scorer, TopFeatures
from tests.support import SHARED_DATA

NF = len(FEATURES)


def _rows(scorer: Scorer, family: list[str]) -> npt.NDArray[np.intp]:
    """Each flow's importance row: its family's forest, -1 (the forests' mean) without one."""
    index = {f: i for i, f in enumerate(scorer.bundle.families)}
    return np.array([index.get(f, -1) for f in family], dtype=np.intp)


def _reference(scorer: Scorer, x: npt.NDArray[np.float32], family: list[str]) -> TopFeatures:
    """The explanations as the NumPy code gives them for the whole batch."""
    rows = _rows(scorer, family)
    top, picked = scorer._top_numpy(x, rows, scorer.top_k)
    totals = picked.sum(axis=1, keepdims=True)
    shares = np.divide(picked, totals, out=np.zeros_like(picked), where=totals > 0)
    return TopFeatures(top, np.take_along_axis(x, top, axis=1), shares)


def _same(got: TopFeatures, want: TopFeatures) -> None:
    assert got.indices.dtype == want.indices.dtype
    assert got.values.dtype == want.values.dtype
    assert got.weights.dtype == want.weights.dtype
    np.testing.assert_array_equal(got.indices, want.indices)
    # Bit for bit (NaN values included): what the JSON lines are written from.
    assert got.values.tobytes() == want.values.tobytes()
    assert got.weights.tobytes() == want.weights.tobytes()


@pytest.fixture(scope="module")
def shipped() -> Scorer:
    cfg = load_config()
    return Scorer(load_bundle(), cfg.detector.thresholds, cfg.detector.top_features)


def test_real_captures_give_numpys_explanations(shipped: Scorer) -> None:
    paths = sorted((SHARED_DATA / "pcaps" / "attacks").rglob("*.pcap"))[:12]
    paths += sorted((SHARED_DATA / "pcaps" / "ndpi").glob("*.pcap"))[:12]
    assert paths, f"no captures under {SHARED_DATA / 'pcaps'}"
    flows = 0
    for batch in analyze_captures(paths, load_config().sniffer, shipped):
        assert batch.scores is not None
        got = batch.scores.top_features
        _same(got, _reference(shipped, batch.features, batch.scores.family))
        flows += len(batch)
    assert flows > 1000


@dataclass
class _Arrays:
    """The bundle arrays explanations read (families, importances, center, scale), chosen
    here to make equal weights; the forests play no part in an explanation."""

    families: tuple[str, ...]
    importances: npt.NDArray[np.float64]
    center: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]


def _tie_scorer(rng: np.random.Generator, top_k: int) -> Scorer:
    fams = ("ddos", "scan", "bruteforce")
    # Few distinct importances (and some 0): many features weigh the same.
    importances = rng.choice([0.0, 0.01, 0.02, 0.05], size=(len(fams), NF))
    arrays = _Arrays(fams, importances, np.zeros(NF), rng.choice([0.0, 1.0, 2.0], size=NF))
    return Scorer(arrays, load_config().detector.thresholds, top_k)  # type: ignore[arg-type]


@pytest.mark.parametrize("top_k", [1, 3, 5, NF])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_rows_with_ties_give_numpys_order(top_k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scorer = _tie_scorer(rng, top_k)
    n = 4000
    # Small integers: equal deviations everywhere; 30 and more reach the cap (10).
    x = rng.choice([0, 1, 2, 3, 30, 40], size=(n, NF)).astype(np.float32)
    x[rng.random(n) < 0.05] = 0.0  # whole rows at the center: every weight 0
    x[rng.random((n, NF)) < 0.002] = np.nan
    family = rng.choice(["ddos", "scan", "bruteforce", "", "tunnel"], size=n).tolist()
    got = scorer._explain_rows(x, _rows(scorer, family))
    _same(got, _reference(scorer, x, family))


def test_distinct_weights_need_no_numpy(shipped: Scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no weights tie the C result stands alone (the NumPy path is not called)."""
    rng = np.random.default_rng(7)
    x = rng.random((500, NF)).astype(np.float32) * 100
    family = rng.choice(list(shipped.bundle.families), size=500).tolist()
    want = _reference(shipped, x, family)

    def refuse(*_args: object) -> None:
        raise AssertionError("NumPy path used for rows without ties")

    monkeypatch.setattr(shipped, "_top_numpy", refuse)
    _same(shipped._explain_rows(x, _rows(shipped, family)), want)


def test_bench_capture_if_built(shipped: Scorer) -> None:
    """The bench capture (bench/make_capture.py) when it is there: 50,000 packets."""
    path = Path(__file__).resolve().parents[2] / "build" / "bench" / "mixed-50k.pcap"
    if not path.exists():
        pytest.skip(f"{path} not built (bench/make_capture.py --packets 50000)")
    for batch in analyze_captures([path], load_config().sniffer, shipped):
        assert batch.scores is not None
        _same(batch.scores.top_features, _reference(shipped, batch.features, batch.scores.family))
