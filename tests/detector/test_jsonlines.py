"""The column-at-a-time JSON lines of ``mld detector analyze`` (detector/jsonlines.py) are
byte for byte the per-flow reference (``json.dumps`` of ``analysis_rows``) on real
captures, with and without --alerts-only, and so are the lines made on worker processes
(``--jobs``) or on the writer thread."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from config import load_config
from detector.analysis import analyze_captures
from detector.bundle import load_bundle
from detector.jsonlines import LineWriter, alert_counts, analysis_lines, analysis_rows
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


def test_line_writer_on_worker_processes_writes_the_same_bytes(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    """LineWriter with 2 worker processes writes, in order, what one process writes."""
    cfg = load_config()
    scorer = Scorer(load_bundle(tiny_bundle.path, tiny_bundle.cache), cfg.detector.thresholds)
    paths = [SHARED_DATA / "pcaps" / "attacks", SHARED_DATA / "pcaps" / "ndpi"]
    batches = list(analyze_captures(paths, cfg.sniffer, scorer))
    assert len(batches) > 3  # several batches in flight at once
    for alerts_only in (False, True):
        texts = []
        for jobs in (1, 2):
            out = tmp_path / f"lines-{jobs}-{alerts_only}.jsonl"
            with out.open("w", encoding="utf-8") as f:
                writer = LineWriter(f, alerts_only=alerts_only, jobs=jobs)
                for batch in batches:
                    writer.write(batch)
                writer.close()
            texts.append(out.read_bytes())
        reference = "".join(
            line + "\n" for b in batches for line in analysis_lines(b, alerts_only=alerts_only)
        )
        assert texts[0] == texts[1] == reference.encode()
        assert len(texts[0]) > 0


def test_line_writer_raises_the_writer_threads_error_and_stops(tiny_bundle: TinyBundle) -> None:
    """The lines are written on a writer thread: a reader that went away (`| head`) must
    still reach the caller as BrokenPipeError (mld then stops quietly), from write() or
    close(), and the thread must end rather than keep the process alive."""
    cfg = load_config()
    scorer = Scorer(load_bundle(tiny_bundle.path, tiny_bundle.cache), cfg.detector.thresholds)
    paths = [SHARED_DATA / "pcaps" / "attacks", SHARED_DATA / "pcaps" / "ndpi"]
    batches = list(analyze_captures(paths, cfg.sniffer, scorer))
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", encoding="utf-8") as f:
        writer = LineWriter(f, alerts_only=False, jobs=1)
        with pytest.raises(BrokenPipeError):
            for batch in batches:
                writer.write(batch)
            writer.close()
        writer.abort()
        assert not any(t.name == "mld-json-lines" for t in threading.enumerate())
        with contextlib.suppress(BrokenPipeError):
            f.close()
