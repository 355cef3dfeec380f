"""Evaluation on labelled captures: detection and false alerts per family, per capture.

``mld detector evaluate LABELS.csv`` runs the offline analysis (:mod:`detector.analysis`) over each
capture a labels file names (shared format: ``pcap, family, attack_hosts, scope``; the
lab's ``window`` rows work too) and over a folder of benign captures (by default the nDPI
captures beside it, with the flows nDPI flags with a risk left out):

* **detection rate** of a family: the share of the flows in scope of its captures (the
  attack flows) that alert (label suspicious or malicious, with the family's thresholds);
  "family right" is the share of those whose verdict names the right family; "blocked"
  those labelled malicious (what the detector sends to the firewall);
* **false alerts**: the share of benign flows that alert, in total and by the family the
  verdict names, the benign flows and the benign *sources* (addresses) that would be
  blocked;
* **Suricata** (when it is installed and a rule folder is given): the share of the same
  flows Suricata alerts on (:mod:`detector.suricata`), the column to beat.

Every flow's scores are kept, so the counts can be taken again under other thresholds
without analysing again: :meth:`Evaluation.calibrate` chooses per-family alert and block
thresholds on one half of the held-out benign captures (``calibration``) so that at most
``budget`` of their flows alert and none of their sources is blocked, and the report then
counts only the other half (``test``) for the false-alert figures.

Captures the bundle was trained on (matched by sha256 against the bundle's training
record) are listed but left out of the totals, since a model scores the data it learnt
from well; ``include_trained`` counts them anyway, marked.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.analysis import AnalysisStats, analyze_captures
from detector.config import ThresholdsConfig
from detector.dataset import Capture, keep_mask, labelled_captures, shared_benign_captures
from detector.families import BENIGN, FAMILIES, family_of_label
from detector.labels import label_columns
from detector.ndpi_risk import flow_key
from detector.scoring import Scorer, label_flows
from detector.suricata import SuricataAlerts
from detector.train import file_sha256
from proto.events_pb2 import LABEL_BENIGN, LABEL_MALICIOUS
from sniffer.config import SnifferConfig

__all__ = ["CaptureResult", "Evaluation", "evaluate", "render_evaluation"]

F32 = npt.NDArray[np.float32]


@dataclass
class CaptureResult:
    """One capture: its in-scope flows' scores (attack flows, or benign flows kept)."""

    name: str
    kind: str  # "attack" or "benign"
    family: str  # the capture's attack family; "benign" for benign captures
    trained_on: bool
    flows: int = 0
    excluded: int = 0  # risk-flagged nDPI flows left out
    packets: int = 0
    rejected: list[str] = field(default_factory=list)
    # "calibration" or "test" for held-out benign captures once calibrated, else "".
    split: str = ""
    final: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    ml: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    fast: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    verdict_family: list[str] = field(default_factory=list)
    right_family: list[str] = field(default_factory=list)
    src: list[bytes] = field(default_factory=list)
    suricata: npt.NDArray[np.bool_] | None = None  # None: Suricata not run

    @property
    def in_scope(self) -> int:
        return len(self.final)

    def labels(self, thresholds: ThresholdsConfig) -> npt.NDArray[np.int32]:
        return label_flows(thresholds, self.final, self.ml, self.fast, self.verdict_family)

    def counts(self, thresholds: ThresholdsConfig) -> dict[str, Any]:
        label = self.labels(thresholds)
        flagged = label != LABEL_BENIGN
        blocked = label == LABEL_MALICIOUS
        fam = np.array(self.verdict_family, dtype=object)
        right = np.array(self.right_family, dtype=object)
        fast_alone = flagged & (self.fast > self.ml) & (self.ml < thresholds.alert)
        return {
            "in_scope": self.in_scope,
            "flagged": int(flagged.sum()),
            "blocked": int(blocked.sum()),
            "family_right": int((flagged & (fam == right)).sum()),
            "fast_alone": int(fast_alone.sum()),
            "by_family": dict(Counter(fam[flagged].tolist())),
            "blocked_sources": len({self.src[i] for i in np.flatnonzero(blocked).tolist()}),
            "suricata": None if self.suricata is None else int(self.suricata.sum()),
        }


def _round_up(x: float) -> float:
    """``x`` to 6 decimals for the config, never below ``x``: rounding a threshold down to
    a benign flow's score would let that flow alert again."""
    r = round(x, 6)
    while r < x:
        r = round(r + 1e-6, 6)
    return min(r, 1.0)


@dataclass
class Evaluation:
    captures: list[CaptureResult]
    thresholds: ThresholdsConfig
    model_version: str
    suricata: str = ""  # "Suricata 7.0.10, 44 rule files in DIR", or why it did not run
    suricata_ran: bool = False
    calibrated: ThresholdsConfig | None = None
    budget: float = 0.005

    @property
    def threshold(self) -> float:
        return self.thresholds.alert

    def counted(self, c: CaptureResult, include_trained: bool) -> bool:
        if c.trained_on and not include_trained:
            return False
        return c.split != "calibration"

    def totals(
        self, include_trained: bool = False, thresholds: ThresholdsConfig | None = None
    ) -> dict[str, dict[str, Any]]:
        """Per family (and ``benign``): captures, flows in scope, flagged, rate, ..."""
        th = thresholds or self.thresholds
        out: dict[str, dict[str, Any]] = {}
        for c in self.captures:
            if not self.counted(c, include_trained):
                continue
            n = c.counts(th)
            t = out.setdefault(
                c.family,
                {
                    "captures": 0,
                    "flows": 0,
                    "flagged": 0,
                    "blocked": 0,
                    "family_right": 0,
                    "fast_alone": 0,
                    "excluded": 0,
                    "blocked_sources": 0,
                    "by_family": Counter(),
                    "suricata": 0 if self.suricata_ran else None,
                },
            )
            t["captures"] += 1
            t["flows"] += n["in_scope"]
            t["excluded"] += c.excluded
            for key in ("flagged", "blocked", "family_right", "fast_alone", "blocked_sources"):
                t[key] += n[key]
            t["by_family"].update(n["by_family"])
            if t["suricata"] is not None and n["suricata"] is not None:
                t["suricata"] += n["suricata"]
        for t in out.values():
            flows = t["flows"]
            t["rate"] = t["flagged"] / flows if flows else 0.0
            t["by_family"] = dict(t["by_family"])
            t["suricata_rate"] = (
                t["suricata"] / flows if flows and t["suricata"] is not None else None
            )
        return out

    def calibrate(self, budget: float = 0.005) -> ThresholdsConfig:
        """Per-family thresholds from the ``calibration`` benign captures (module doc).

        Each family gets an equal share of the false-alert budget: its alert threshold is
        the lowest value (not under the configured one) at which at most
        ``budget / families`` of the calibration flows alert as that family; its block
        threshold the lowest (not under the configured one) above every calibration flow
        that family names, so no calibration source is blocked (1.0 when a benign flow
        scores 1.0: the family then cannot block without blocking benign traffic, and the
        report says so)."""
        cal = [c for c in self.captures if c.split == "calibration"]
        n = sum(c.in_scope for c in cal)
        base = self.thresholds
        if n == 0:
            return base
        final = np.concatenate([c.final for c in cal]).astype(np.float64)
        ml = np.concatenate([c.ml for c in cal])
        fast = np.concatenate([c.fast for c in cal])
        fam = np.array([f for c in cal for f in c.verdict_family], dtype=object)
        # A flow a fast rule alone scores cannot be blocked (unless configured for its
        # family): it does not bind the block threshold.
        may_block = np.array([base.fast_rule_alone_may_block(f) for f in fam], dtype=bool)
        blockable = may_block | ~((fast > ml) & (ml < base.alert))
        allowed = math.floor(budget * n / len(FAMILIES))
        alert: dict[str, float] = {}
        block: dict[str, float] = {}
        for family in FAMILIES:
            scores = np.sort(final[fam == family])[::-1]
            a0, b0 = base.alert_of(family), base.block_of(family)
            a = a0
            if len(scores) > allowed:
                # Strictly above the (allowed+1)-th highest benign score of the family.
                a = max(a0, float(np.nextafter(np.float32(scores[allowed]), np.float32(2))))
            a = min(a, 1.0)
            worst = final[(fam == family) & blockable]
            b = b0
            if len(worst):
                b = max(b0, float(np.nextafter(np.float32(worst.max()), np.float32(2))))
            b = max(min(b, 1.0), a)
            if a != base.alert:
                alert[family] = _round_up(a)
            if b != base.block:
                block[family] = _round_up(b)
        self.calibrated = dataclasses.replace(base, alert_per_family=alert, block_per_family=block)
        self.budget = budget
        return self.calibrated

    def to_json(self, include_trained: bool = False) -> dict[str, Any]:
        def captures(th: ThresholdsConfig) -> list[dict[str, Any]]:
            out = []
            for c in self.captures:
                n = c.counts(th)
                out.append(
                    {
                        "capture": c.name,
                        "kind": c.kind,
                        "family": c.family,
                        "trained_on": c.trained_on,
                        "split": c.split,
                        "flows": c.flows,
                        "excluded": c.excluded,
                        "rejected": c.rejected,
                        **n,
                        "rate": round(n["flagged"] / c.in_scope, 6) if c.in_scope else 0.0,
                    }
                )
            return out

        result: dict[str, Any] = {
            "model_version": self.model_version,
            "threshold": self.thresholds.alert,
            "thresholds": dataclasses.asdict(self.thresholds),
            "suricata": self.suricata,
            "totals": self.totals(include_trained),
            "captures": captures(self.thresholds),
        }
        if self.calibrated is not None:
            result["calibration"] = {
                "budget": self.budget,
                "thresholds": dataclasses.asdict(self.calibrated),
                "totals": self.totals(include_trained, self.calibrated),
                "captures": captures(self.calibrated),
            }
        return result


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _trained_hashes(training: dict[str, Any]) -> set[str]:
    return {
        d["sha256"] for d in training.get("data", []) if not d.get("held_out") and d.get("sha256")
    }


def _run(
    capture: Capture,
    kind: str,
    sniffer: SnifferConfig,
    scorer: Scorer,
    trained: set[str],
    suricata: SuricataAlerts | None,
) -> CaptureResult:
    family = BENIGN
    if capture.rows:
        family = family_of_label(capture.rows[0].label or capture.rows[0].family)
    result = CaptureResult(capture.name, kind, family, file_sha256(capture.path) in trained)
    stats = AnalysisStats()
    finals: list[F32] = []
    mls: list[F32] = []
    fasts: list[F32] = []
    sur: list[npt.NDArray[np.bool_]] = []
    flagged_keys = suricata.flagged(capture.path) if suricata is not None else set()
    for batch in analyze_captures([capture.path], sniffer, scorer, stats):
        assert batch.scores is not None
        flows = batch.flows
        s = batch.scores
        result.flows += len(flows)
        if kind == "attack":
            _fam, fine = label_columns(capture.rows, flows)
            scope = np.array([v != BENIGN for v in fine.tolist()], dtype=bool)
            right = [family_of_label(str(v)) for v in fine.tolist()]
        else:
            keep = keep_mask(flows, capture.exclude)
            result.excluded += int((~keep).sum())
            scope = keep
            right = [BENIGN] * len(flows)
        idx = np.flatnonzero(scope)
        finals.append(s.final_score[idx])
        mls.append(s.ml_score[idx])
        fasts.append(s.fast_score[idx])
        result.verdict_family += [s.family[i] for i in idx.tolist()]
        result.right_family += [right[i] for i in idx.tolist()]
        result.src += [flows.src_addr[i] for i in idx.tolist()]
        if suricata is not None:
            proto = flows["protocol"].tolist()
            sp, dp = flows["src_port"].tolist(), flows["dst_port"].tolist()
            sur.append(
                np.array(
                    [
                        flow_key(
                            proto[i],
                            _addr(flows.src_addr[i]),
                            sp[i],
                            _addr(flows.dst_addr[i]),
                            dp[i],
                        )
                        in flagged_keys
                        for i in idx.tolist()
                    ],
                    dtype=bool,
                )
            )
    if finals:
        result.final = np.concatenate(finals).astype(np.float32)
        result.ml = np.concatenate(mls).astype(np.float32)
        result.fast = np.concatenate(fasts).astype(np.float32)
    if suricata is not None:
        result.suricata = np.concatenate(sur) if sur else np.zeros(0, dtype=bool)
    result.packets = stats.packets
    result.rejected = [r.message for r in stats.rejected]
    return result


def evaluate(
    labels_csv: Path,
    benign_dir: Path | None,
    sniffer: SnifferConfig,
    scorer: Scorer,
    progress: Callable[[str], None] | None = None,
    suricata: Callable[[list[Path]], SuricataAlerts] | None = None,
    calibrate_budget: float | None = None,
) -> Evaluation:
    """Analyse every labelled and benign capture and count detections per capture.

    ``suricata`` runs Suricata over the capture paths (:func:`detector.suricata.run_suricata`
    with a rule folder bound); ``calibrate_budget`` splits the held-out benign captures and
    chooses thresholds on one half (:meth:`Evaluation.calibrate`)."""
    say = progress or (lambda _m: None)
    trained = _trained_hashes(scorer.bundle.manifest.training)
    work: list[tuple[Capture, str]] = [
        (Capture(name, path, rows, source="shared-attack"), "attack")
        for name, path, rows in labelled_captures(labels_csv)
    ]
    if benign_dir is not None:
        work += [(c, "benign") for c in shared_benign_captures(benign_dir)]
    alerts = None
    note = "not run"
    if suricata is not None:
        say(f"suricata: {len(work)} captures in one run")
        alerts = suricata([c.path for c, _ in work])
        note = (
            f"Suricata {alerts.version} with {alerts.rules_dir} "
            f"({alerts.alerts} alerts; a flow is flagged when an alert names its 5-tuple)"
        )
    results = []
    for i, (capture, kind) in enumerate(work, 1):
        r = _run(capture, kind, sniffer, scorer, trained, alerts)
        results.append(r)
        n = r.counts(scorer.thresholds)
        say(
            f"[{i}/{len(work)}] {capture.name}: {n['flagged']}/{r.in_scope} flagged"
            f"{' (trained on)' if r.trained_on else ''}"
        )
    ev = Evaluation(
        results,
        scorer.thresholds,
        scorer.bundle.version,
        suricata=note,
        suricata_ran=alerts is not None,
    )
    if calibrate_budget is not None:
        held = [c for c in results if c.kind == "benign" and not c.trained_on]
        for j, c in enumerate(held):
            c.split = "calibration" if j % 2 == 0 else "test"
        ev.calibrate(calibrate_budget)
    return ev


def _pct(x: float | None) -> str:
    return "      -" if x is None else f"{x:7.4f}"


def _render_totals(ev: Evaluation, th: ThresholdsConfig, include_trained: bool) -> list[str]:
    lines = [
        f"{'family':10s} {'captures':>8s} {'flows':>8s} {'alerted':>8s} {'rate':>7s} "
        f"{'blocked':>8s} {'suricata':>8s}  meaning"
    ]
    totals = ev.totals(include_trained, th)
    for family, t in sorted(totals.items(), key=lambda kv: kv[0] == BENIGN):
        if family == BENIGN:
            meaning = (
                f"false-alert rate ({t['excluded']} risk-flagged flows excluded); "
                f"{t['blocked_sources']} benign source(s) blocked"
            )
        else:
            meaning = (
                f"detection rate; family right on {t['family_right']} of {t['flagged']}; "
                f"{t['fast_alone']} by a fast rule alone"
            )
        lines.append(
            f"{family:10s} {t['captures']:8d} {t['flows']:8d} {t['flagged']:8d} "
            f"{t['rate']:7.4f} {t['blocked']:8d} {_pct(t['suricata_rate']):>8s}  {meaning}"
        )
    benign = totals.get(BENIGN)
    if benign and benign["flows"]:
        parts = [
            f"{f} {benign['by_family'].get(f, 0) / benign['flows']:.4f}"
            for f in sorted(benign["by_family"], key=lambda f: -benign["by_family"][f])
        ]
        lines.append(
            "false alerts by family (share of benign flows): " + (", ".join(parts) or "none")
        )
    return lines


def render_evaluation(
    ev: Evaluation, include_trained: bool = False, per_capture: Sequence[str] = ("attack",)
) -> str:
    """The evaluation as text tables: per capture, then totals per family."""
    th = ev.thresholds
    lines = [
        f"model bundle {ev.model_version}, alert threshold {th.alert}"
        + (f" (per family {th.alert_per_family})" if th.alert_per_family else ""),
        f"suricata column: {ev.suricata}",
        "",
        f"{'capture':58s} {'family':8s} {'flows':>7s} {'alerted':>8s} {'rate':>7s} "
        f"{'fam ok':>7s} {'blocked':>8s} {'suricata':>8s}",
    ]
    for c in ev.captures:
        if c.kind not in per_capture and not (
            c.kind == "benign" and "benign-alerts" in per_capture
        ):
            continue
        n = c.counts(th)
        if c.kind == "benign" and n["flagged"] == 0:
            continue
        mark = "  (trained on)" if c.trained_on else ""
        rate = n["flagged"] / c.in_scope if c.in_scope else 0.0
        sur = "-" if n["suricata"] is None else str(n["suricata"])
        lines.append(
            f"{c.name[:58]:58s} {c.family:8s} {c.in_scope:7d} {n['flagged']:8d} {rate:7.3f} "
            f"{n['family_right']:7d} {n['blocked']:8d} {sur:>8s}{mark}"
        )
    lines.append("")
    lines += _render_totals(ev, th, include_trained)
    if ev.calibrated is not None:
        cal = ev.calibrated
        n_cal = sum(c.in_scope for c in ev.captures if c.split == "calibration")
        lines += [
            "",
            f"calibrated on {n_cal} flows of the held-out benign captures at even positions "
            f"(budget {ev.budget:.2%} of benign flows alerting, no benign source blocked); "
            "benign below is the other half:",
            f"  alert_per_family: {cal.alert_per_family or '{}'}",
            f"  block_per_family: {cal.block_per_family or '{}'}",
        ]
        stuck = [f for f in FAMILIES if cal.block_of(f) >= 1.0]
        if stuck:
            lines.append(
                f"  {', '.join(stuck)}: a benign flow scores 1.0, so these cannot block "
                "without blocking benign traffic"
            )
        lines.append("")
        lines += _render_totals(ev, cal, include_trained)
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
