"""Flows of a labelled lab capture, counted per family and label (native flow engine)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import native
from detector.labels import label_columns, read_labels
from sniffer.records import flow_columns

__all__ = ["summarize_capture"]


def summarize_capture(folder: Path) -> dict[str, Any]:
    """``{flows, families: {family: n}, labels: {label: n}}`` of ``folder/capture.pcap``."""
    rows = read_labels(folder / "labels.csv")
    engine = native.FlowEngine()
    families: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    total = 0

    def count(events: Any) -> None:
        nonlocal total
        if len(events) == 0:
            return
        family, label = label_columns(rows, flow_columns(events, "lab"))
        families.update(family.tolist())
        labels.update(label.tolist())
        total += len(events)

    for events in engine.feed_file(str(folder / "capture.pcap")):
        count(events)
    count(engine.finish())
    return {
        "flows": total,
        "families": dict(families.most_common()),
        "labels": dict(labels.most_common()),
    }
