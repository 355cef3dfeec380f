"""The column-at-a-time JSON lines of ``mld detector analyze`` (detector/jsonlines.py) are
byte for byte the per-flow reference (``json.dumps`` of ``analysis_rows``) on real
captures, with and without --alerts-only."""

from __future__ import annotations

import json
from collections import Counter

from config import load_config
from detector.analysis import analyze_captures
from detector.bundle import load_bundle
from detector.jsonlines import alert_counts, analysis_lines, analysis_rows
from detector.scoring import Scorer
from tests.detector.conftest import TinyBundle
from tests.support import SHARED_DATA


def test_batch_lines_equal_per_flow_rows_on_real_captures(tiny_bundle: TinyBundle) -> None:
    cfg = load_config()
    scorer = Scorer(
        load_bundle(tiny_bundle.path, tiny_bundle.cache), cfg.detector.thresholds, top_k=5
    )
    paths = [SHARED_DATA / "pcaps" / "attacks", SHARED_DATA / "pcaps" / "ndpi"]
    flows = alerts = 0
    for batch in analyze_captures(paths, cfg.sniffer, scorer):
        rows = analysis_rows(batch)
        reference = [json.dumps(r, separators=(",", ":")) for r in rows]
        assert analysis_lines(batch) == reference
        only = [line for line, r in zip(reference, rows, strict=True) if r["label"] != "benign"]
        assert analysis_lines(batch, alerts_only=True) == only
        counted = Counter((r["family"], r["label"]) for r in rows if r["label"] != "benign")
        assert alert_counts(batch) == counted
        flows += len(rows)
        alerts += len(only)
    # Enough of both kinds that the comparison means something.
    assert flows > 5_000
    assert 100 < alerts < flows
