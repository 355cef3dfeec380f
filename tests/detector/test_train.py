"""The training pipeline: split by capture, per-family report, a bundle that loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from base.errors import ModelError
from detector.dataset import SHARED_TRAIN, Capture, discover
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


def test_excluded_features_are_never_split_on(tmp_path: Path) -> None:
    """detector.train.exclude_features: the forests ignore those columns (importance 0,
    no node splits on them) while the bundle keeps the full feature list and still loads
    (compiled forests reproduce sklearn on probe rows that hold real values there)."""
    import dataclasses

    from config import load_config
    from detector.bundle import load_bundle, read_manifest
    from detector.config import TrainConfig
    from detector.features import FEATURES
    from detector.train import train_bundle

    keep = {
        "shared/attacks/scan/masscan_tcp_0_1000.pcap",
        "shared/attacks/ddos/syn_dominate_ecn_cwr.pcapng",
        "shared/ndpi/reddit.pcap",
        "shared/ndpi/pinterest.pcap",
        "shared/ndpi/1kxun.pcap",
    }
    captures = [
        dataclasses.replace(c, held_out=False)
        for c in discover(None, SHARED_DATA)
        if c.name in keep
    ]
    dropped = ("fwd.init_window", "fwd.ece_count", "fwd.cwr_count", "dst_port")
    base = TrainConfig(n_trees=4, max_depth=6, n_trees_per_family={}, max_depth_per_family={})
    settings = dataclasses.replace(base, jobs=2, exclude_features=dropped)
    no_scan = train_bundle(
        captures,
        tmp_path / "b0",
        load_config().sniffer,
        dataclasses.replace(settings, no_forest=("scan",)),
        cache_dir=tmp_path / "c",
    )
    # no_forest: the family has training flows but no forest; the others are trained.
    assert set(no_scan.manifest.families) == {"ddos"}
    assert "Families without a forest (detector.train.no_forest): scan." in no_scan.report
    result = train_bundle(
        captures, tmp_path / "b", load_config().sniffer, settings, cache_dir=tmp_path / "c"
    )
    manifest = read_manifest(tmp_path / "b")
    assert manifest.features == FEATURES
    assert list(manifest.training["settings"]["exclude_features"]) == list(dropped)
    cols = [FEATURES.index(n) for n in dropped]
    assert set(manifest.families) == {"scan", "ddos"}
    for family, entry in manifest.families.items():
        assert all(entry.importances[j] == 0.0 for j in cols), family
        probe = np.array(entry.probe_rows)
        # The probe rows carry the real values (a SYN flood's ECN/CWR flags among them).
        assert probe[:, cols].any(), family
    assert "fwd.init_window, fwd.ece_count" in result.report
    load_bundle(tmp_path / "b", tmp_path / "c")
    # Trained on the same flows without the exclusion, the SYN flood's ECN/CWR flags and
    # the tools' initial windows are what the forests split on: the exclusion is not a no-op.
    free = train_bundle(
        captures,
        tmp_path / "b2",
        load_config().sniffer,
        dataclasses.replace(base, jobs=2),
        cache_dir=tmp_path / "c",
    )
    assert any(free.manifest.families[f].importances[j] > 0 for f in ("scan", "ddos") for j in cols)


def test_an_unknown_excluded_feature_is_refused_before_reading(tmp_path: Path) -> None:
    from config import load_config
    from detector.config import TrainConfig
    from detector.train import train_bundle

    missing = Capture("shared/x.pcap", tmp_path / "does-not-exist.pcap", source="shared-attack")
    with pytest.raises(ModelError, match=r"unknown features \['fwd.init_windw'\].*fwd.init_window"):
        train_bundle(
            [missing],
            tmp_path / "b",
            load_config().sniffer,
            TrainConfig(exclude_features=("fwd.init_windw",)),
        )
    with pytest.raises(ModelError, match=r"no_forest names unknown families \['C2'\]"):
        train_bundle(
            [missing], tmp_path / "b", load_config().sniffer, TrainConfig(no_forest=("C2",))
        )
