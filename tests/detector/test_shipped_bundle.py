"""The model bundle that ships in detector/bundle: it loads, and says what it learnt from."""

from __future__ import annotations

import numpy as np

from detector.bundle import DEFAULT_BUNDLE_DIR, load_bundle, read_manifest
from detector.families import FAMILIES
from detector.features import FEATURES, SCHEMA_HASH


def test_the_shipped_bundle_loads_with_every_family() -> None:
    bundle = load_bundle()  # compiled by `make install` into build/models
    # c2 has no forest (detector.train.no_forest: the lab's beacons differ from its
    # browsing only by the recipe's pages, detector/README.md "What carries over"); its
    # verdicts come from the beacon fast rule. Every other family must be there.
    assert bundle.families == tuple(f for f in FAMILIES if f != "c2")
    m = read_manifest(DEFAULT_BUNDLE_DIR)
    assert m.features == FEATURES and m.schema_hash == SCHEMA_HASH
    for family, entry in m.families.items():
        # The load above already checked the probe rows; they hold attacks and non-attacks.
        proba = np.array(entry.probe_proba)
        assert (proba >= 0.5).any() and (proba < 0.5).any(), family
        assert abs(sum(entry.importances) - 1.0) < 1e-6


def test_the_shipped_bundle_records_its_data_and_held_out_split() -> None:
    training = read_manifest(DEFAULT_BUNDLE_DIR).training
    data = training["data"]
    lab = [d for d in data if d["capture"].startswith("lab/")]
    assert lab and any(d["held_out"] for d in lab) and any(not d["held_out"] for d in lab)
    held = {d["sha256"] for d in data if d["held_out"]}
    trained = {d["sha256"] for d in data if not d["held_out"]}
    assert not held & trained
    for family in FAMILIES:
        if family == "c2":  # no forest (see above)
            continue
        assert "precision" in training["metrics"]["families"][family]
    assert (DEFAULT_BUNDLE_DIR / "REPORT.md").read_text().startswith("# Model bundle")
