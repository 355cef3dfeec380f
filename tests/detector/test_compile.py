"""Compiled forests (treelite -> tl2cgen .so) agree with sklearn's predict_proba.

Stated tolerance: 1e-5 absolute on the probability (detector.bundle.PROBE_TOLERANCE). The
forest takes the same path as sklearn on every row (thresholds rounded down to float32),
so the only difference left is float32 summation of the leaves; rows placed exactly on,
just below and just above split thresholds check the rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tl2cgen
import treelite
from sklearn.ensemble import RandomForestClassifier

from base.errors import ModelError
from config import load_config
from detector.bundle import PROBE_TOLERANCE
from detector.compile import CompileOptions, compile_model, forest_to_treelite, library_path
from detector.dataset import Capture, extract
from tests.support import SHARED_DATA


@pytest.fixture(scope="module")
def real_rows() -> tuple[np.ndarray, np.ndarray]:
    """Features of real flows: a scan, an amplification and benign nDPI captures."""
    cfg = load_config().sniffer
    xs, ys = [], []
    for name, attack in (
        ("attacks/scan/masscan_tcp_0_1000.pcap", 1),
        ("attacks/ddos/amp_udp_snmp.pcapng", 0),
        ("ndpi/quic.pcap", 0),
        ("ndpi/dns_long_domainname.pcap", 0),
        ("ndpi/http_ipv6.pcap", 0),
        ("ndpi/skype.pcap", 0),
    ):
        path = SHARED_DATA / "pcaps" / name
        if not path.exists():
            continue
        flows = extract(Capture(name, path), cfg)
        xs.append(flows.x)
        ys.append(np.full(len(flows.x), attack))
    return np.concatenate(xs), np.concatenate(ys)


def _boundary_rows(forest: RandomForestClassifier, base: np.ndarray) -> np.ndarray:
    """Rows with one feature set exactly on a split threshold (as float32) or next to it."""
    rng = np.random.default_rng(3)
    rows = []
    for est in forest.estimators_[:4]:
        tree = est.tree_
        for node in np.flatnonzero(tree.children_left != -1)[:40]:
            t32 = np.float32(tree.threshold[node])
            for value in (
                t32,
                np.nextafter(t32, np.float32(np.inf)),
                np.nextafter(t32, np.float32(-np.inf)),
            ):
                row = base[rng.integers(len(base))].copy()
                row[tree.feature[node]] = value
                rows.append(row)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize(("trees", "depth"), [(4, 6), (24, 14)])
def test_compiled_forest_matches_sklearn(
    tmp_path: Path, real_rows: tuple[np.ndarray, np.ndarray], trees: int, depth: int
) -> None:
    x, y = real_rows
    forest = RandomForestClassifier(
        n_estimators=trees, max_depth=depth, random_state=0, class_weight="balanced"
    ).fit(x, y)
    model = forest_to_treelite(forest)
    model_file = tmp_path / "scan.tl"
    model.serialize(str(model_file))
    lib = compile_model(model_file, tmp_path / "cache")
    predictor = tl2cgen.Predictor(lib, nthread=1)
    rows = np.concatenate([x, _boundary_rows(forest, x)])
    got = predictor.predict(tl2cgen.DMatrix(rows, dtype="float32")).reshape(-1)
    want = forest.predict_proba(rows)[:, 1]
    assert np.max(np.abs(got - want)) <= PROBE_TOLERANCE
    # Not a constant model: it separates the scan from the rest.
    assert want.min() < 0.5 < want.max()


def test_compiled_libraries_are_cached_by_content(
    tmp_path: Path, real_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = real_rows
    forest = RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(x, y)
    model_file = tmp_path / "ddos.tl"
    forest_to_treelite(forest).serialize(str(model_file))
    first = compile_model(model_file, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert compile_model(model_file, tmp_path) == first
    assert first.stat().st_mtime_ns == mtime  # not compiled again
    other = library_path(model_file, tmp_path, CompileOptions(cflags=("-O1",)))
    assert other != first
    # A checkpoint treelite cannot read is an error that says what to do.
    bad = tmp_path / "bad.tl"
    bad.write_bytes(b"not a treelite checkpoint")
    with pytest.raises(ModelError, match=r"compiling .*bad\.tl failed"):
        compile_model(bad, tmp_path)
    assert not list(tmp_path.glob(".*.tmp.so"))


def test_only_binary_forests_are_converted(real_rows: tuple[np.ndarray, np.ndarray]) -> None:
    x, _y = real_rows
    three = np.arange(len(x)) % 3
    forest = RandomForestClassifier(n_estimators=2, max_depth=2).fit(x, three)
    with pytest.raises(ModelError, match="binary forest"):
        forest_to_treelite(forest)
    assert treelite.__version__.startswith("4.1.")  # the version tl2cgen 1.0.0 embeds


@pytest.mark.parametrize("start", [17.25, 1000.5, 70000.3])
def test_split_between_adjacent_float32_values(tmp_path: Path, start: float) -> None:
    # sklearn puts the threshold at the float64 midpoint of two adjacent float32 values,
    # which float32 cannot hold; rounding it to nearest would send one of them the wrong
    # way half of the time. Both parities of the lower value are covered. (sklearn only
    # splits values more than 1e-7 apart, so the values are large enough for their ulp.)
    lows = [np.float32(start), np.nextafter(np.float32(start), np.float32(np.inf))]
    for k, low in enumerate(lows):
        high = np.nextafter(low, np.float32(np.inf))
        x = np.array([[low], [high]] * 8, dtype=np.float32)
        y = np.array([0, 1] * 8)
        forest = RandomForestClassifier(n_estimators=1, bootstrap=False, random_state=0).fit(x, y)
        model_file = tmp_path / f"f{k}.tl"
        forest_to_treelite(forest).serialize(str(model_file))
        predictor = tl2cgen.Predictor(compile_model(model_file, tmp_path / "cache"), nthread=1)
        got = predictor.predict(tl2cgen.DMatrix(x[:2], dtype="float32")).reshape(-1)
        np.testing.assert_allclose(got, forest.predict_proba(x[:2])[:, 1], atol=PROBE_TOLERANCE)
        assert got.tolist() == [0.0, 1.0]
