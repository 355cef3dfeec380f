"""Evaluation on labelled captures: detection rate per family, false positives on benign.

``mld detector evaluate LABELS.csv`` runs the offline analysis (:mod:`detector.analysis`) over each
capture a labels file names (shared format: ``pcap, family, attack_hosts, scope``; the
lab's ``window`` rows work too) and over a folder of benign captures (by default the nDPI
captures beside it, with the flows nDPI flags with a risk left out):

* **detection rate** of a family: the share of the flows in scope of its captures (the
  attack flows) whose final score reaches the alert threshold; "family right" is the
  share of those whose verdict names the right family.
* **false-positive rate**: the share of benign flows that reach the alert threshold.

Captures the bundle was trained on (matched by sha256 against the bundle's training
record) are listed but left out of the totals, since a model scores the data it learnt
from well; ``include_trained`` counts them anyway, marked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.analysis import AnalysisStats, analyze_captures
from detector.dataset import Capture, keep_mask, labelled_captures, shared_benign_captures
from detector.families import BENIGN, family_of_label
from detector.labels import label_columns
from detector.scoring import Scorer
from detector.train import file_sha256
from sniffer.config import SnifferConfig

__all__ = ["CaptureResult", "Evaluation", "evaluate", "render_evaluation"]


@dataclass
class CaptureResult:
    """One capture's counts."""

    name: str
    kind: str  # "attack" or "benign"
    family: str  # the capture's attack family; "benign" for benign captures
    trained_on: bool
    flows: int = 0
    in_scope: int = 0  # attack flows (attack captures) or benign flows kept (benign)
    flagged: int = 0  # of those, at or above the alert threshold
    family_right: int = 0  # of the flagged attack flows, verdict family == capture family
    excluded: int = 0  # risk-flagged nDPI flows left out
    packets: int = 0
    rejected: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.flagged / self.in_scope if self.in_scope else 0.0


@dataclass
class Evaluation:
    captures: list[CaptureResult]
    threshold: float
    model_version: str

    def totals(self, include_trained: bool = False) -> dict[str, dict[str, Any]]:
        """Per family (and ``benign``): captures, flows in scope, flagged, rate."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.captures:
            if c.trained_on and not include_trained:
                continue
            t = out.setdefault(
                c.family,
                {"captures": 0, "flows": 0, "flagged": 0, "family_right": 0, "excluded": 0},
            )
            t["captures"] += 1
            t["flows"] += c.in_scope
            t["flagged"] += c.flagged
            t["family_right"] += c.family_right
            t["excluded"] += c.excluded
        for t in out.values():
            t["rate"] = t["flagged"] / t["flows"] if t["flows"] else 0.0
        return out

    def to_json(self, include_trained: bool = False) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "threshold": self.threshold,
            "totals": self.totals(include_trained),
            "captures": [
                {
                    "capture": c.name,
                    "kind": c.kind,
                    "family": c.family,
                    "trained_on": c.trained_on,
                    "flows": c.flows,
                    "in_scope": c.in_scope,
                    "flagged": c.flagged,
                    "rate": round(c.rate, 6),
                    "family_right": c.family_right,
                    "excluded": c.excluded,
                    "rejected": c.rejected,
                }
                for c in self.captures
            ],
        }


def _trained_hashes(training: dict[str, Any]) -> set[str]:
    return {
        d["sha256"] for d in training.get("data", []) if not d.get("held_out") and d.get("sha256")
    }


def _run(
    capture: Capture, kind: str, sniffer: SnifferConfig, scorer: Scorer, trained: set[str]
) -> CaptureResult:
    family = BENIGN
    if capture.rows:
        family = family_of_label(capture.rows[0].label or capture.rows[0].family)
    result = CaptureResult(capture.name, kind, family, file_sha256(capture.path) in trained)
    stats = AnalysisStats()
    alert = scorer.thresholds.alert
    for batch in analyze_captures([capture.path], sniffer, scorer, stats):
        assert batch.scores is not None
        flows = batch.flows
        flagged = batch.scores.final_score >= alert
        result.flows += len(flows)
        if kind == "attack":
            _fam, fine = label_columns(capture.rows, flows)
            scope = np.array([v != BENIGN for v in fine.tolist()])
            right = np.array([family_of_label(str(v)) for v in fine.tolist()], dtype=object)
            result.in_scope += int(scope.sum())
            result.flagged += int((scope & flagged).sum())
            verdict_family = np.array(batch.scores.family, dtype=object)
            result.family_right += int((scope & flagged & (verdict_family == right)).sum())
        else:
            keep = keep_mask(flows, capture.exclude)
            result.excluded += int((~keep).sum())
            result.in_scope += int(keep.sum())
            result.flagged += int((keep & flagged).sum())
    result.packets = stats.packets
    result.rejected = [r.message for r in stats.rejected]
    return result


def evaluate(
    labels_csv: Path,
    benign_dir: Path | None,
    sniffer: SnifferConfig,
    scorer: Scorer,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Analyse every labelled and benign capture and count detections per capture."""
    say = progress or (lambda _m: None)
    trained = _trained_hashes(scorer.bundle.manifest.training)
    work: list[tuple[Capture, str]] = [
        (Capture(name, path, rows, source="shared-attack"), "attack")
        for name, path, rows in labelled_captures(labels_csv)
    ]
    if benign_dir is not None:
        work += [(c, "benign") for c in shared_benign_captures(benign_dir)]
    results = []
    for i, (capture, kind) in enumerate(work, 1):
        r = _run(capture, kind, sniffer, scorer, trained)
        results.append(r)
        say(
            f"[{i}/{len(work)}] {capture.name}: {r.flagged}/{r.in_scope} flagged"
            f"{' (trained on)' if r.trained_on else ''}"
        )
    return Evaluation(results, scorer.thresholds.alert, scorer.bundle.version)


def render_evaluation(
    ev: Evaluation, include_trained: bool = False, per_capture: Sequence[str] = ("attack",)
) -> str:
    """The evaluation as text tables: per attack capture, then totals per family."""
    lines = [f"model bundle {ev.model_version}, alert threshold {ev.threshold}", ""]
    lines.append(
        f"{'capture':58s} {'family':8s} {'attack flows':>12s} {'detected':>9s} "
        f"{'rate':>7s} {'family ok':>9s}"
    )
    for c in ev.captures:
        if c.kind not in per_capture:
            continue
        mark = "  (trained on)" if c.trained_on else ""
        lines.append(
            f"{c.name[:58]:58s} {c.family:8s} {c.in_scope:12d} {c.flagged:9d} "
            f"{c.rate:7.3f} {c.family_right:9d}{mark}"
        )
    lines += [
        "",
        f"{'family':10s} {'captures':>8s} {'flows':>8s} {'flagged':>8s} {'rate':>7s}  meaning",
    ]
    for family, t in sorted(ev.totals(include_trained).items(), key=lambda kv: kv[0] == BENIGN):
        meaning = (
            f"false-positive rate ({t['excluded']} risk-flagged flows excluded)"
            if family == BENIGN
            else f"detection rate; family right on {t['family_right']} of {t['flagged']}"
        )
        lines.append(
            f"{family:10s} {t['captures']:8d} {t['flows']:8d} {t['flagged']:8d} "
            f"{t['rate']:7.4f}  {meaning}"
        )
    trained = [c.name for c in ev.captures if c.trained_on]
    if trained:
        verb = "counted anyway" if include_trained else "not counted"
        lines.append("")
        lines.append(
            f"{len(trained)} capture(s) the bundle was trained on, {verb}: "
            + ", ".join(trained[:6])
            + (" ..." if len(trained) > 6 else "")
        )
    return "\n".join(lines) + "\n"
