"""The training pipeline: split by capture, per-family report, a bundle that loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from base.errors import ModelError
from detector.dataset import SHARED_TRAIN, discover
from detector.families import FAMILIES, family_of_label
from detector.labels import LabelRow, write_labels
from tests.detector.conftest import TinyBundle
from tests.support import SHARED_DATA


def test_held_out_captures_never_train(tiny_bundle: TinyBundle) -> None:
    training = tiny_bundle.result.manifest.training
    data = training["data"]
    trained = [d for d in data if not d["held_out"]]
    held = [d for d in data if d["held_out"]]
    assert {f"shared/{p}" for p in SHARED_TRAIN} <= {d["capture"] for d in trained}
    assert not {d["capture"] for d in trained} & {d["capture"] for d in held}
    assert not {d["sha256"] for d in trained} & {d["sha256"] for d in held}
    # Every training row comes from a training capture (no cap is hit on this data).
    assert training["rows"]["train"] == sum(d["flows"] for d in trained)
    assert training["rows"]["held_out"] == sum(d["flows"] for d in held)


def test_report_has_the_metrics_per_family(tiny_bundle: TinyBundle) -> None:
    metrics = tiny_bundle.result.metrics
    for family in ("scan", "ddos"):
        m = metrics["families"][family]
        for key in ("precision", "recall", "f1", "fpr_benign", "positives", "nodes"):
            assert key in m
        assert 0 <= m["fpr_benign"] <= 1
    confusion = metrics["confusion"]
    assert confusion["classes"] == ["benign", *FAMILIES]
    assert (
        sum(map(sum, confusion["matrix"]))
        == tiny_bundle.result.manifest.training["rows"]["held_out"]
    )
    report = tiny_bundle.result.report
    assert "## Held-out results per family" in report
    assert "## Confusion" in report
    assert "Top features per family" in report
    assert (tiny_bundle.path / "REPORT.md").read_text() == report
    assert report.splitlines()[0] == f"# Model bundle {tiny_bundle.result.manifest.version}"


def test_lab_folders_are_split_by_name(tmp_path: Path) -> None:
    for name in ("00-scan-seed1", "01-scan-seed2"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(
            SHARED_DATA / "pcaps/attacks/scan/nmap_80_vanilla.pcap", folder / "capture.pcap"
        )
        write_labels(
            folder / "labels.csv",
            [
                LabelRow(
                    "capture.pcap", "scan", "10.87.1.10", "flows_from_attacker", label="port_scan"
                )
            ],
        )
    captures = discover(tmp_path, None, lab_test=("01-scan-seed2",))
    assert [(c.name, c.held_out) for c in captures] == [
        ("lab/00-scan-seed1", False),
        ("lab/01-scan-seed2", True),
    ]
    with pytest.raises(ModelError, match="not in"):
        discover(tmp_path, None, lab_test=("07-mixed-seed8",))
    with pytest.raises(ModelError, match="make lab-dataset"):
        discover(tmp_path / "missing", None)


def test_every_label_has_a_family() -> None:
    import yaml

    from tests.support import REPO

    recipes = yaml.safe_load((REPO / "lab" / "recipes.yaml").read_text())["recipes"]
    for name, recipe in recipes.items():
        label = recipe.get("label")
        if label:
            assert family_of_label(label) in (*FAMILIES, "benign"), name
    with pytest.raises(ValueError, match="belongs to no detector family"):
        family_of_label("ransomware_host_metrics")
