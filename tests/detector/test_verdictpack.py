"""Verdicts serialized in C from columns are the bytes of the Verdict messages Python
builds (detector/verdicts.py), on real records of a scan and of benign traffic."""

from __future__ import annotations

from detector.bundle import load_bundle
from detector.config import ThresholdsConfig
from detector.features import columns_from_packed, feature_matrix
from detector.scoring import Scorer
from detector.verdictpack import verdict_bytes
from detector.verdicts import build_verdicts
from proto.events_pb2 import Verdict
from proto.flowpack import flow_keys
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import BENIGN_PCAP, SCAN_PCAP, capture_packed


def test_verdicts_from_columns_are_the_messages_bytes(tiny_bundle: TinyBundle) -> None:
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    seen_labels: set[int] = set()
    for top_k in (0, 3, 5):
        scorer = Scorer(bundle, ThresholdsConfig(), top_k)
        for part in capture_packed(SCAN_PCAP, BENIGN_PCAP):
            rows, strings = part.rows, part.strings
            rules = [strings[i] for i in rows["fast_rule"].tolist()]
            scores = scorer.score(
                feature_matrix(columns_from_packed(rows)), rows["fast_score"], rules
            )
            ids = [f"det-1-7-{i}" for i in range(len(rows))]
            want = build_verdicts(scores, flow_keys(rows), "sensor-1/eth0", ids, 1234567890123)
            got = verdict_bytes(scores, rows, "sensor-1/eth0", ids, 1234567890123)
            assert got is not None
            assert got == [v.SerializeToString() for v in want]
            assert [Verdict.FromString(b) for b in got] == want
            seen_labels |= set(scores.label.tolist())
    assert len(seen_labels) >= 2
