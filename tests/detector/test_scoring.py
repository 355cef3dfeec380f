"""Scoring: ml = max over families, final = max(fast, ml), labels, explanations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from base.errors import ConfigError
from config import load_config
from detector.bundle import load_bundle
from detector.config import ThresholdsConfig
from detector.dataset import Capture, extract
from detector.features import FEATURES
from detector.scoring import Scorer
from proto.events_pb2 import LABEL_BENIGN, LABEL_MALICIOUS, LABEL_SUSPICIOUS
from tests.detector.conftest import TinyBundle
from tests.support import SHARED_DATA


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    name = "attacks/scan/masscan_tcp_0_1000.pcap"
    flows = extract(Capture(name, SHARED_DATA / "pcaps" / name), load_config().sniffer)
    benign = "ndpi/quic.pcap"
    more = extract(Capture(benign, SHARED_DATA / "pcaps" / benign), load_config().sniffer)
    return np.concatenate([flows.x[:200], more.x])


def test_final_is_max_of_fast_and_ml(tiny_bundle: TinyBundle, rows: np.ndarray) -> None:
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    scorer = Scorer(bundle, ThresholdsConfig(alert=0.5, block=0.9))
    n = len(rows)
    rng = np.random.default_rng(0)
    fast = rng.uniform(0, 1, n).astype(np.float32)
    rule = ["port_scan" if f > 0 else "" for f in fast]
    s = scorer.score(rows, fast, rule)
    per_family = bundle.predict(rows)
    np.testing.assert_array_equal(s.family_scores, per_family)
    np.testing.assert_array_equal(s.ml_score, per_family.max(axis=1))
    np.testing.assert_array_equal(s.final_score, np.maximum(fast, s.ml_score))
    for i in range(n):
        want = "scan" if fast[i] > s.ml_score[i] else s.ml_family[i]
        assert s.family[i] == want
        assert s.ml_family[i] == bundle.families[int(np.argmax(per_family[i]))]
    assert s.model_version == bundle.version
    # A fast rule alone (it won, the forests said benign) alerts but never blocks.
    rule_alone = (fast > s.ml_score) & (s.ml_score < 0.5)
    expected = np.where(
        (s.final_score >= 0.9) & ~rule_alone,
        LABEL_MALICIOUS,
        np.where(s.final_score >= 0.5, LABEL_SUSPICIOUS, LABEL_BENIGN),
    )
    np.testing.assert_array_equal(s.label, expected)
    assert (rule_alone & (s.final_score >= 0.9)).any()  # the case occurs in this data
    # Both sides win somewhere, and every label occurs: the checks above are not vacuous.
    assert (fast > s.ml_score).any() and (fast < s.ml_score).any()
    assert {LABEL_BENIGN, LABEL_SUSPICIOUS, LABEL_MALICIOUS} <= set(s.label.tolist())


def test_block_threshold_per_family(tiny_bundle: TinyBundle, rows: np.ndarray) -> None:
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    strict = Scorer(bundle, ThresholdsConfig(alert=0.5, block=0.6, block_per_family={"scan": 1.01}))
    s = strict.score(rows)
    scan = np.array([f == "scan" for f in s.family])
    assert scan.any()
    assert not (s.label[scan] == LABEL_MALICIOUS).any()
    assert (s.label[scan & (s.final_score >= 0.5)] == LABEL_SUSPICIOUS).all()
    with pytest.raises(ConfigError, match="unknown families"):
        Scorer(bundle, ThresholdsConfig(block_per_family={"ransomware": 0.5}))


def test_fast_rule_alone_blocks_only_when_configured(
    tiny_bundle: TinyBundle, rows: np.ndarray
) -> None:
    """A fast rule at 1.0 on flows the forests score benign: with the default an alert
    (suspicious), with block_on_fast_rule_alone a block (malicious). Where the forests
    agree (ml at or above the alert threshold) the block stands either way."""
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    fast = np.ones(len(rows), dtype=np.float32)
    rule = ["port_scan"] * len(rows)
    default = Scorer(bundle, ThresholdsConfig()).score(rows, fast, rule)
    forests_benign = default.ml_score < 0.5
    assert forests_benign.any() and (~forests_benign).any()
    assert (default.label[forests_benign] == LABEL_SUSPICIOUS).all()
    assert (default.label[~forests_benign] == LABEL_MALICIOUS).all()
    allowed = Scorer(bundle, ThresholdsConfig(block_on_fast_rule_alone=True))
    assert (allowed.score(rows, fast, rule).label == LABEL_MALICIOUS).all()
    listed = Scorer(bundle, ThresholdsConfig(fast_rule_alone_blocks=("scan",)))
    assert (listed.score(rows, fast, rule).label == LABEL_MALICIOUS).all()


def test_fast_rule_alone_blocks_per_family(tiny_bundle: TinyBundle, rows: np.ndarray) -> None:
    """fast_rule_alone_blocks names the families whose rule alone may block: by default
    the DNS tunnel rule (family tunnel) blocks where the forests say benign, the port scan
    and brute force rules only alert; the older block_on_fast_rule_alone still means every
    family; unknown family names are refused."""
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    n = len(rows)
    fast = np.ones(n, dtype=np.float32)
    rules = ["dns_tunnel", "port_scan", "brute_force"]
    rule = [rules[i % 3] for i in range(n)]
    default = Scorer(bundle, ThresholdsConfig()).score(rows, fast, rule)
    alone = default.ml_score < 0.5
    family = np.array(default.family, dtype=object)
    assert (alone & (family == "tunnel")).any() and (alone & (family == "scan")).any()
    assert (default.label[alone & (family == "tunnel")] == LABEL_MALICIOUS).all()
    assert (default.label[alone & (family == "scan")] == LABEL_SUSPICIOUS).all()
    assert (default.label[alone & (family == "bruteforce")] == LABEL_SUSPICIOUS).all()
    brute = Scorer(bundle, ThresholdsConfig(fast_rule_alone_blocks=("bruteforce",)))
    s = brute.score(rows, fast, rule)
    assert (s.label[alone & (family == "bruteforce")] == LABEL_MALICIOUS).all()
    assert (s.label[alone & (family == "tunnel")] == LABEL_SUSPICIOUS).all()
    none = Scorer(bundle, ThresholdsConfig(fast_rule_alone_blocks=()))
    assert (none.score(rows, fast, rule).label[alone] == LABEL_SUSPICIOUS).all()
    legacy = ThresholdsConfig(fast_rule_alone_blocks=(), block_on_fast_rule_alone=True)
    assert (Scorer(bundle, legacy).score(rows, fast, rule).label == LABEL_MALICIOUS).all()
    with pytest.raises(ConfigError, match="fast_rule_alone_blocks names unknown"):
        ThresholdsConfig(fast_rule_alone_blocks=("tunnels",)).check()


def test_fast_rule_alone_blocks_from_yaml(tmp_path: Path) -> None:
    """The key loads from a config file as a list; the shipped default is [tunnel]."""
    assert load_config().detector.thresholds.fast_rule_alone_blocks == ("tunnel",)
    path = tmp_path / "mld.yaml"
    path.write_text("detector:\n  thresholds:\n    fast_rule_alone_blocks: [tunnel, c2]\n")
    got = load_config(path).detector.thresholds
    assert got.fast_rule_alone_may_block("c2") and not got.fast_rule_alone_may_block("scan")


def test_alert_threshold_per_family(tiny_bundle: TinyBundle, rows: np.ndarray) -> None:
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    base = Scorer(bundle, ThresholdsConfig(alert=0.5, block=0.99)).score(rows)
    family = np.array(base.family, dtype=object)
    fam = family[int(np.argmax(base.final_score))]
    raised = Scorer(
        bundle, ThresholdsConfig(alert=0.5, block=0.99, alert_per_family={fam: 0.99})
    ).score(rows)
    mine = family == fam
    between = mine & (base.final_score >= 0.5) & (base.final_score < 0.99)
    assert between.any()
    assert (raised.label[between] == LABEL_BENIGN).all()
    np.testing.assert_array_equal(raised.label[~mine], base.label[~mine])
    with pytest.raises(ConfigError, match="below its alert"):
        ThresholdsConfig(alert=0.5, block=0.9, alert_per_family={fam: 0.95}).check()


def test_explanations_name_features_with_their_values(
    tiny_bundle: TinyBundle, rows: np.ndarray
) -> None:
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    s = Scorer(bundle, ThresholdsConfig(), top_k=4).score(rows)
    for i in range(len(rows)):
        top = s.top_features[i]
        assert len(top) <= 4
        assert sum(w for _n, _v, w in top) == pytest.approx(1.0, abs=1e-6) or not top
        for name, value, weight in top:
            assert name in FEATURES
            assert value == rows[i][FEATURES.index(name)]
            assert 0 < weight <= 1
        weights = [w for _n, _v, w in top]
        assert weights == sorted(weights, reverse=True)
    # A scan flow's explanation includes the behaviour of its source.
    scan_rows = [i for i in range(len(rows)) if s.family[i] == "scan" and s.final_score[i] >= 0.5]
    assert scan_rows
    names = {n for i in scan_rows for n, _v, _w in s.top_features[i]}
    assert any(n.startswith("ctx.") for n in names)


def test_taken_scores_explain_and_name_as_the_whole_batch(
    tiny_bundle: TinyBundle, rows: np.ndarray
) -> None:
    """The live detector takes the verdicts it sends (Scores.take) before reading their
    explanations, which are then made for those flows only, and writes family and rule
    names from Scores.codes: both must give what the whole batch gives, row for row."""
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    scorer = Scorer(bundle, ThresholdsConfig(alert=0.5, block=0.9), top_k=5)
    rng = np.random.default_rng(3)
    fast = rng.uniform(0, 1, len(rows)).astype(np.float32)
    rule = [("port_scan", "beacon", "", "not_a_rule")[i % 4] for i in range(len(rows))]
    idx = rng.choice(len(rows), size=len(rows) // 3, replace=False)
    taken = scorer.score(rows, fast, rule).take(idx)
    assert taken.top_features._arrays is None  # still deferred: nothing computed yet
    whole = scorer.score(rows, fast, rule)
    for name in ("indices", "values", "weights"):
        np.testing.assert_array_equal(
            getattr(taken.top_features, name), getattr(whole.top_features, name)[idx]
        )
    assert [taken.top_features[i] for i in range(len(idx))] == [
        whole.top_features[i] for i in idx.tolist()
    ]
    codes = taken.codes
    assert codes is not None
    assert [codes.names[c] for c in codes.family.tolist()] == taken.family
    assert [codes.names[c] for c in codes.ml_family.tolist()] == taken.ml_family
    assert [codes.rules[c] for c in codes.rule.tolist()] == taken.fast_rule
    assert taken.family == [whole.family[i] for i in idx.tolist()]
    assert {"scan", "c2"} & set(taken.family)  # rules' families occur, not only forests'
