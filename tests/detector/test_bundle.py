"""Model bundles: a good one loads; a bad one is refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from base.errors import ModelError
from detector.bundle import load_bundle, read_manifest
from detector.features import FEATURES
from tests.detector.conftest import TinyBundle


def _copy(tiny: TinyBundle, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny.path, dst)
    return dst


def _edit_manifest(path: Path, change: Any) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_trained_bundle_loads_and_scores(tiny_bundle: TinyBundle) -> None:
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    assert set(bundle.families) <= {"ddos", "scan", "bruteforce", "tunnel", "lateral"}
    assert "scan" in bundle.families and "ddos" in bundle.families
    m = read_manifest(tiny_bundle.path)
    assert m.features == FEATURES
    entry = m.families["scan"]
    probe = np.array(entry.probe_rows, dtype=np.float32)
    got = bundle.predict(probe)[:, bundle.families.index("scan")]
    np.testing.assert_allclose(got, entry.probe_proba, atol=1e-5)
    assert bundle.predict(np.zeros((0, len(FEATURES)), np.float32)).shape == (
        0,
        len(bundle.families),
    )
    # The training record says what data was used and which captures were held out.
    data = m.training["data"]
    assert any(d["held_out"] for d in data) and any(not d["held_out"] for d in data)
    assert all(len(d["sha256"]) == 64 for d in data)


def test_wrong_feature_list_is_refused(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    _edit_manifest(path, lambda m: m["features"].__setitem__(0, "host.cpu_percent"))
    with pytest.raises(ModelError, match=r"feature list does not match .*host\.cpu_percent"):
        load_bundle(path, tiny_bundle.cache)


def test_reordered_features_are_refused(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    _edit_manifest(path, lambda m: m["features"].reverse())
    with pytest.raises(ModelError, match="order differs"):
        load_bundle(path, tiny_bundle.cache)


def test_a_model_file_that_does_not_match_its_hash_is_refused(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    path = _copy(tiny_bundle, tmp_path)
    with open(path / "scan.tl", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="does not match the manifest's sha256"):
        load_bundle(path, tiny_bundle.cache)


def test_probe_mismatch_is_refused(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    # The forest compiles but does not give the probabilities it was trained to give.
    path = _copy(tiny_bundle, tmp_path)

    def skew(m: dict[str, Any]) -> None:
        probe = m["families"]["scan"]["probe"]
        probe["proba"] = [min(1.0, p + 0.25) if p < 0.75 else p - 0.25 for p in probe["proba"]]

    _edit_manifest(path, skew)
    with pytest.raises(ModelError, match="differs from the trained one"):
        load_bundle(path, tiny_bundle.cache)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.__setitem__("format", 99), "bundle format 99"),
        (
            lambda m: m["families"].__setitem__("ransomware", m["families"]["scan"]),
            "not detector families",
        ),
        (lambda m: m.pop("feature_center"), "malformed manifest"),
        (
            lambda m: m["families"]["scan"].__setitem__("importances", [1.0]),
            "importances and probe rows need",
        ),
    ],
)
def test_malformed_manifests_are_refused(
    tiny_bundle: TinyBundle, tmp_path: Path, change: Any, message: str
) -> None:
    path = _copy(tiny_bundle, tmp_path)
    _edit_manifest(path, change)
    with pytest.raises(ModelError, match=message):
        load_bundle(path, tiny_bundle.cache)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model bundle"):
        load_bundle(tmp_path, tmp_path / "cache")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        load_bundle(tmp_path, tmp_path / "cache")


def test_small_batches_take_the_row_path_with_the_same_result(tiny_bundle: TinyBundle) -> None:
    from detector.bundle import DIRECT_MAX_ROWS

    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    rows = np.concatenate(
        [np.array(e.probe_rows, dtype=np.float32) for e in bundle.manifest.families.values()]
    )
    assert len(rows) > DIRECT_MAX_ROWS
    whole = bundle.predict(rows)  # tl2cgen Predictor
    for size in (1, 3, DIRECT_MAX_ROWS):
        parts = [bundle.predict(rows[i : i + size]) for i in range(0, len(rows), size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # Rows that are views with a stride (a column slice of a wider array) work too.
    wide = np.zeros((4, len(FEATURES) + 3), dtype=np.float32)
    wide[:, : len(FEATURES)] = rows[:4]
    np.testing.assert_array_equal(bundle.predict(wide[:, : len(FEATURES)]), whole[:4])


def test_scoring_never_writes_into_the_callers_rows(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    # tl2cgen's quantize mode rewrites its input row in place; a bench once passed its
    # own matrix straight in and then compared corrupted rows. Every path works on a copy.
    from detector.compile import CompileOptions

    plain = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    quantized = load_bundle(tiny_bundle.path, tmp_path / "q", options=CompileOptions(quantize=True))
    rows = np.concatenate(
        [np.array(e.probe_rows, dtype=np.float32) for e in plain.manifest.families.values()]
    )
    before = rows.copy()
    for size in (1, 8, len(rows)):
        plain.predict(rows[:size])
        quantized.predict(rows[:size])
        np.testing.assert_array_equal(rows, before)
