"""Compiled forests (treelite -> tl2cgen .so) agree with sklearn's predict_proba.

Stated tolerance: 1e-5 absolute on the probability (detector.bundle.PROBE_TOLERANCE). The
forest takes the same path as sklearn on every row (thresholds rounded down to float32),
so the only difference left is float32 summation of the leaves; rows placed exactly on,
just below and just above split thresholds check the rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tl2cgen
import treelite
from sklearn.ensemble import RandomForestClassifier

from base.errors import ModelError
from config import load_config
from detector.bundle import PROBE_TOLERANCE
from detector.compile import (
    CompileOptions,
    compile_model,
    forest_to_treelite,
    library_path,
    verified_copy,
    verified_library_bytes,
)
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


def _forest_file(x: np.ndarray, y: np.ndarray, path: Path, seed: int) -> tuple[Path, Any]:
    forest = RandomForestClassifier(n_estimators=2, max_depth=3, random_state=seed).fit(x, y)
    forest_to_treelite(forest).serialize(str(path))
    return path, forest


def test_a_library_planted_in_the_cache_is_compiled_again_never_loaded(
    tmp_path: Path, real_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    """The attack: whoever can write the model cache (or point detector.model_cache_dir at
    a folder of theirs) drops a library under the name the detector will look up, and the
    detector, running as root, dlopens it. A cached library is now trusted only when it
    matches the record written when it was compiled, and loaded from a private copy."""
    x, y = real_rows
    genuine, forest = _forest_file(x, y, tmp_path / "scan.tl", seed=0)
    planted_src, other = _forest_file(x, 1 - y, tmp_path / "evil.tl", seed=1)
    cache = tmp_path / "cache"
    lib = compile_model(genuine, cache)
    planted = compile_model(planted_src, tmp_path / "elsewhere")
    shutil.copyfile(planted, lib)  # the attacker's library under the genuine name
    with pytest.raises(ModelError, match="does not match its record"):
        verified_copy(lib)
    # Looked up again: compiled again from the checkpoint, and the forest is the genuine one.
    assert compile_model(genuine, cache) == lib
    predictor = tl2cgen.Predictor(verified_copy(lib), nthread=1)
    got = predictor.predict(tl2cgen.DMatrix(x, dtype="float32")).reshape(-1)
    np.testing.assert_allclose(got, forest.predict_proba(x)[:, 1], atol=PROBE_TOLERANCE)
    assert not np.allclose(got, other.predict_proba(x)[:, 1], atol=PROBE_TOLERANCE)


@pytest.mark.parametrize("how", ["other_owner", "group_writable", "other_library"])
def test_a_record_planted_beside_a_library_is_not_trusted(
    tmp_path: Path, real_rows: tuple[np.ndarray, np.ndarray], how: str
) -> None:
    x, y = real_rows
    genuine, _ = _forest_file(x, y, tmp_path / "scan.tl", seed=0)
    planted_src, _ = _forest_file(x, 1 - y, tmp_path / "evil.tl", seed=1)
    lib = compile_model(genuine, tmp_path / "cache")
    planted = compile_model(planted_src, tmp_path / "elsewhere")
    shutil.copyfile(planted, lib)
    record = lib.with_name(lib.name + ".sha256")
    digest = hashlib.sha256(lib.read_bytes()).hexdigest()
    name = "other.so" if how == "other_library" else lib.name
    record.write_text(json.dumps({"library": name, "sha256": digest}))
    if how == "other_owner":
        os.chown(record, 65534, 65534)  # nobody: what another local user could write
    elif how == "group_writable":
        record.chmod(0o664)
    assert verified_library_bytes(lib) is None
    with pytest.raises(ModelError, match="does not match its record"):
        verified_copy(lib)


def test_a_checkpoint_is_compiled_from_the_bytes_that_were_checked(
    tmp_path: Path, real_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = real_rows
    model_file, forest = _forest_file(x, y, tmp_path / "ddos.tl", seed=0)
    data = model_file.read_bytes()
    model_file.write_bytes(b"swapped after the check")  # the file no longer matters
    lib = compile_model(data, tmp_path / "cache", name="ddos")
    assert lib.name.startswith("ddos-")
    predictor = tl2cgen.Predictor(verified_copy(lib), nthread=1)
    got = predictor.predict(tl2cgen.DMatrix(x, dtype="float32")).reshape(-1)
    np.testing.assert_allclose(got, forest.predict_proba(x)[:, 1], atol=PROBE_TOLERANCE)
