"""The bundle's forests run through native/scoring.c (detector.bundle.CompiledForest) and
give tl2cgen's Predictor's probabilities bit for bit, without importing tl2cgen, treelite
or SciPy.

The reference is tl2cgen's own Predictor on the same compiled library and rows: the
features of real captures, random rows, rows with NaN (missing), on one and two threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config import load_config
from detector.analysis import analyze_captures
from detector.bundle import CompiledForest, load_bundle
from detector.features import FEATURES
from tests.detector.conftest import TinyBundle
from tests.support import SHARED_DATA, modules_imported_by

ROOT = Path(__file__).resolve().parents[2]


def _libraries(bundle_path: Path | None, cache: Path | None) -> dict[str, Path]:
    bundle = load_bundle(bundle_path, cache)
    return {f: bundle._predictors[f].lib for f in bundle.families}


def _rows() -> np.ndarray:
    paths = sorted((SHARED_DATA / "pcaps" / "attacks").rglob("*.pcap"))[:10]
    paths += sorted((SHARED_DATA / "pcaps" / "ndpi").glob("*.pcap"))[:10]
    batches = [b.features for b in analyze_captures(paths, load_config().sniffer, None)]
    real = np.concatenate(batches)
    rng = np.random.default_rng(3)
    noise = (rng.random((2000, len(FEATURES))) * 1000).astype(np.float32)
    missing = noise[:300].copy()
    missing[rng.random(missing.shape) < 0.2] = np.nan
    return np.concatenate([real, noise, missing])


@pytest.mark.parametrize("threads", [1, 2])
def test_shipped_forests_equal_tl2cgen(threads: int) -> None:
    import tl2cgen

    x = _rows()
    assert len(x) > 3000
    for family, lib in _libraries(None, None).items():
        want = tl2cgen.Predictor(lib, nthread=threads).predict(tl2cgen.DMatrix(x, dtype="float32"))
        got = CompiledForest(lib, threads).predict(x)
        assert got.dtype == np.float32
        assert got.tobytes() == want.reshape(-1).astype(np.float32).tobytes(), family


def test_tiny_bundle_forests_equal_tl2cgen(tiny_bundle: TinyBundle) -> None:
    import tl2cgen

    x = _rows()[:3000]
    for family, lib in _libraries(tiny_bundle.path, tiny_bundle.cache).items():
        want = tl2cgen.Predictor(lib).predict(tl2cgen.DMatrix(x, dtype="float32"))
        assert CompiledForest(lib).predict(x).tobytes() == want.reshape(-1).tobytes(), family


def test_rows_are_not_written_and_shapes_are_checked() -> None:
    lib = next(iter(_libraries(None, None).values()))
    forest = CompiledForest(lib)
    x = _rows()[:500]
    before = x.copy()
    forest.predict(x)
    assert x.tobytes() == before.tobytes()
    with pytest.raises(ValueError, match="features"):
        forest.predict(np.zeros((3, len(FEATURES) - 1), dtype=np.float32))
    assert forest.predict(np.zeros((0, len(FEATURES)), dtype=np.float32)).shape == (0,)


def test_loading_the_bundle_imports_no_tl2cgen_treelite_or_scipy() -> None:
    code = (
        "from detector.bundle import load_bundle\n"
        "b = load_bundle()\n"
        "import numpy as np\n"
        "b.predict(np.zeros((5, len(b.center)), dtype=np.float32))\n"
    )
    assert modules_imported_by(code, ("tl2cgen", "treelite", "scipy")) == []
