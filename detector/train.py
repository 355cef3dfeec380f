"""Training: labelled captures -> one RandomForest per family -> a model bundle and a report.

Steps (``mld detector train``):

1. Read every capture with the offline analysis path (:mod:`detector.dataset`), so the
   training features are the ones the live detector computes. Past
   ``train.max_flows_per_label`` flows of one label in one capture, a seeded random sample
   is kept (floods make hundreds of thousands of near-identical flows).
2. Split by capture: held-out captures never contribute a training row.
3. Per family, fit a scikit-learn RandomForest one-against-the-rest (benign flows and the
   other families are negatives) with ``class_weight="balanced"``, since bruteforce and
   tunnel runs make few flows.
4. Evaluate on the held-out rows: per family precision, recall, F1 and false-positive rate
   on benign flows at the alert threshold; a confusion matrix of the true family against
   the detector's (the argmax family when its score reaches the threshold, else benign);
   feature importances.
5. Convert each forest to treelite, write the bundle (checkpoints, manifest with probe
   rows, REPORT.md), then load it the way the detector does: compile, and check the
   compiled forests against sklearn on the probe rows. Compile time per family is
   recorded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from base.errors import ModelError
from detector.bundle import FamilyEntry, Manifest, load_bundle, write_bundle
from detector.compile import forest_to_treelite
from detector.config import TrainConfig
from detector.dataset import Capture, CaptureFlows, extract
from detector.families import BENIGN, FAMILIES
from detector.features import FEATURES, SCHEMA_HASH
from sniffer.config import SnifferConfig

__all__ = ["TrainResult", "excluded_columns", "file_sha256", "render_report", "train_bundle"]

log = logging.getLogger(__name__)

PROBE_ROWS = 24


class TrainResult:
    def __init__(self, manifest: Manifest, report: str, metrics: dict[str, Any]) -> None:
        self.manifest = manifest
        self.report = report
        self.metrics = metrics


def _sample(flows: CaptureFlows, cap: int, rng: np.random.Generator) -> npt.NDArray[np.intp]:
    keep: list[npt.NDArray[np.intp]] = []
    for label in sorted(set(flows.label.tolist())):
        idx = np.flatnonzero(flows.label == label)
        if len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.intp)


def _max_features(text: str) -> str | float:
    return text if text in ("sqrt", "log2") else float(text)


def _family_metrics(
    y_true: npt.NDArray[np.bool_], y_pred: npt.NDArray[np.bool_], benign: npt.NDArray[np.bool_]
) -> dict[str, float | int]:
    tp = int((y_true & y_pred).sum())
    fp = int((~y_true & y_pred).sum())
    fn = int((y_true & ~y_pred).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n_benign = int(benign.sum())
    fpr = int((benign & y_pred).sum()) / n_benign if n_benign else 0.0
    return {
        "positives": int(y_true.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr_benign": fpr,
        "benign": n_benign,
    }


def _by_source(
    source: npt.NDArray[np.str_],
    family: npt.NDArray[np.object_],
    ml_alert: npt.NDArray[np.bool_],
    final_alert: npt.NDArray[np.bool_],
    trained: Sequence[str],
) -> dict[str, Any]:
    """Held-out detection per data source (lab, shared), by the forests alone and by the
    final score (with the sniffer's fast rules): the share of each family's flows that
    alert, and of benign flows (the false-positive rate)."""
    out: dict[str, Any] = {}
    for src in sorted(set(source.tolist())):
        here = source == src
        rows: dict[str, Any] = {}
        for fam in [BENIGN, *trained]:
            m = here & (family == fam)
            n = int(m.sum())
            if n:
                rows[fam] = {
                    "flows": n,
                    "ml": float(ml_alert[m].mean()),
                    "final": float(final_alert[m].mean()),
                }
        out[src] = rows
    return out


def _robust_scale(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], ...]:
    if len(x) == 0:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    center = np.median(x, axis=0).astype(np.float64)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25).astype(np.float64)
    spread = np.mean(np.abs(x - center), axis=0)
    scale = np.where(scale > 0, scale, spread)
    return center, np.where(scale > 0, scale, 1.0)


def train_bundle(
    captures: Sequence[Capture],
    out_dir: Path,
    sniffer: SnifferConfig,
    train: TrainConfig,
    alert_threshold: float = 0.5,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train every family on ``captures``, write the bundle to ``out_dir``, return the report."""
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import RandomForestClassifier

    say = progress or (lambda _msg: None)
    excluded = excluded_columns(train.exclude_features)  # before the captures are read
    unknown = sorted(set(train.no_forest) - set(FAMILIES))
    if unknown:
        raise ModelError(
            f"detector.train.no_forest names unknown families {unknown} "
            f"(families: {', '.join(FAMILIES)})"
        )
    rng = np.random.default_rng(train.seed)
    jobs = train.jobs or os.cpu_count() or 1
    started = time.monotonic()
    parts_train: list[tuple[CaptureFlows, npt.NDArray[np.intp]]] = []
    parts_test: list[CaptureFlows] = []
    data_used: list[dict[str, Any]] = []
    for i, cap in enumerate(captures, 1):
        flows = extract(cap, sniffer)
        counts = {
            str(k): int(v) for k, v in zip(*np.unique(flows.label, return_counts=True), strict=True)
        }
        say(
            f"[{i}/{len(captures)}] {cap.name}: {len(flows.x)} flows "
            f"({'held out' if cap.held_out else 'train'})"
        )
        data_used.append(
            {
                "capture": cap.name,
                "sha256": file_sha256(cap.path),
                "held_out": cap.held_out,
                "packets": flows.packets,
                "flows": len(flows.x),
                "excluded_risky": flows.excluded,
                "labels": counts,
            }
        )
        if cap.held_out:
            parts_test.append(flows)
        else:
            parts_train.append((flows, _sample(flows, train.max_flows_per_label, rng)))
    if not parts_train:
        raise ModelError("every capture is held out: nothing to train on")
    x_train = np.concatenate([f.x[idx] for f, idx in parts_train])
    fam_train = np.concatenate([f.family[idx] for f, idx in parts_train])
    x_test = np.concatenate([f.x for f in parts_test]) if parts_test else x_train[:0]
    fam_test = np.concatenate([f.family for f in parts_test]) if parts_test else fam_train[:0]
    fast_test = np.concatenate([f.fast_score for f in parts_test]) if parts_test else np.zeros(0)
    source_test = (
        np.concatenate([np.full(len(f.x), f.capture.source.split("-")[0]) for f in parts_test])
        if parts_test
        else np.zeros(0, dtype=str)
    )
    say(f"training rows {len(x_train)}, held-out rows {len(x_test)}")
    # Excluded features: a constant column is never split on, so the forests ignore them;
    # the probe rows and the benign medians below keep the real values.
    x_fit = x_train
    if excluded:
        x_fit = x_train.copy()
        x_fit[:, excluded] = 0.0
        say(f"features held constant (never split on): {', '.join(train.exclude_features)}")

    forests: dict[str, Any] = {}
    entries: dict[str, FamilyEntry] = {}
    metrics: dict[str, Any] = {"families": {}}
    scores_test = np.zeros((len(x_test), len(FAMILIES)), dtype=np.float64)
    trained: list[str] = []
    for j, family in enumerate(FAMILIES):
        y = fam_train == family
        if y.sum() == 0:
            say(f"{family}: no training flows; family skipped")
            continue
        if family in train.no_forest:
            say(f"{family}: {int(y.sum())} training flows, no forest (detector.train.no_forest)")
            continue
        t0 = time.monotonic()
        n_trees, max_depth = train.size_of(family)
        forest = RandomForestClassifier(
            n_estimators=n_trees,
            max_depth=max_depth,
            min_samples_leaf=train.min_samples_leaf,
            max_features=_max_features(train.max_features),
            class_weight="balanced",
            n_jobs=jobs,
            random_state=train.seed,
        ).fit(x_fit, y.astype(np.int64))
        fit_s = time.monotonic() - t0
        forest.n_jobs = 1
        forests[family] = forest
        trained.append(family)
        if len(x_test):
            scores_test[:, j] = forest.predict_proba(x_test)[:, 1]
        # Probe rows: positives and negatives from the training set, for the load check.
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        pick = np.concatenate(
            [
                rng.choice(pos, min(len(pos), PROBE_ROWS // 2), replace=False),
                rng.choice(neg, min(len(neg), PROBE_ROWS // 2), replace=False),
            ]
        )
        probe = x_train[pick]
        nodes = sum(int(e.tree_.node_count) for e in forest.estimators_)
        entries[family] = FamilyEntry(
            family=family,
            model="",
            sha256="",
            n_trees=len(forest.estimators_),
            max_depth=max(int(e.tree_.max_depth) for e in forest.estimators_),
            n_nodes=nodes,
            importances=tuple(float(v) for v in forest.feature_importances_),
            probe_rows=tuple(tuple(float(v) for v in row) for row in probe),
            probe_proba=tuple(float(v) for v in forest.predict_proba(probe)[:, 1]),
        )
        metrics["families"][family] = {
            "fit_s": round(fit_s, 2),
            "nodes": nodes,
            "train_positives": int(y.sum()),
        }
        say(f"{family}: {int(y.sum())} positive training flows, {nodes} nodes, fit {fit_s:.1f} s")

    benign_test = fam_test == BENIGN
    idx = [FAMILIES.index(f) for f in trained]
    if len(x_test):
        for j, family in zip(idx, trained, strict=True):
            m = _family_metrics(
                fam_test == family, scores_test[:, j] >= alert_threshold, benign_test
            )
            metrics["families"][family].update(m)
        sub = scores_test[:, idx]
        best = np.argmax(sub, axis=1)
        predicted = np.where(
            sub[np.arange(len(sub)), best] >= alert_threshold,
            np.array(trained, dtype=object)[best],
            BENIGN,
        )
        classes = [BENIGN, *FAMILIES]
        confusion = [
            [int(((fam_test == t) & (predicted == p)).sum()) for p in classes] for t in classes
        ]
        metrics["confusion"] = {"classes": classes, "matrix": confusion}
        any_alert = predicted != BENIGN
        metrics["fpr_benign_any_family"] = (
            float((benign_test & any_alert).sum() / benign_test.sum()) if benign_test.any() else 0.0
        )
        final = np.maximum(fast_test, sub.max(axis=1))
        metrics["by_source"] = _by_source(
            source_test, fam_test, any_alert, final >= alert_threshold, trained
        )
    metrics["threshold"] = alert_threshold

    center, scale = _robust_scale(x_train[fam_train == BENIGN])
    models = {f: forest_to_treelite(forests[f]) for f in trained}
    created = datetime.now(UTC)
    training = {
        "trained": created.isoformat(timespec="seconds"),
        "data": data_used,
        "rows": {"train": len(x_train), "held_out": len(x_test)},
        "settings": asdict(train),
        "sniffer_capture": asdict(sniffer.capture),
        "schema_hash": SCHEMA_HASH,
        "metrics": metrics,
        "versions": {
            "sklearn": sklearn_version,
            "python": platform.python_version(),
            **_lib_versions(),
        },
    }
    manifest = write_bundle(out_dir, models, entries, center, scale, training, created=created)
    # Load it as the detector will: compile (timed), then the probe check.
    t0 = time.monotonic()
    load_bundle(out_dir, cache_dir)
    metrics["compile_and_load_s"] = round(time.monotonic() - t0, 1)
    # The same creation time: the manifest rewritten with the compile time and the report
    # keeps the version the report names.
    report = render_report(manifest.version, training, metrics, forests)
    manifest = write_bundle(
        out_dir, models, entries, center, scale, training, report, created=created
    )
    say(f"done in {time.monotonic() - started:.0f} s: bundle {manifest.version} in {out_dir}")
    return TrainResult(manifest, report, metrics)


def excluded_columns(names: Sequence[str]) -> list[int]:
    """Columns of :data:`FEATURES` named by ``detector.train.exclude_features``; an
    unknown name is an error that lists the features (a typo would silently train on it)."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ModelError(
            f"detector.train.exclude_features names unknown features {unknown}; "
            f"the features are: {', '.join(FEATURES)}"
        )
    return [FEATURES.index(n) for n in names]


def file_sha256(path: Path) -> str:
    """sha256 of a capture file (evaluation uses it to tell training captures apart)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _lib_versions() -> dict[str, str]:
    import tl2cgen
    import treelite

    return {"treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__}


def render_report(
    version: str, training: dict[str, Any], metrics: dict[str, Any], forests: dict[str, Any]
) -> str:
    """The training report as Markdown (REPORT.md in the bundle, printed by mld detector train)."""
    lines = [
        f"# Model bundle {version}",
        "",
        f"Trained {training['trained']}; {training['rows']['train']} training rows, "
        f"{training['rows']['held_out']} held-out rows (split by capture). "
        f"Threshold {metrics['threshold']}.",
        "",
        "Features the forests never split on (detector.train.exclude_features): "
        + (", ".join(training["settings"].get("exclude_features", ())) or "none")
        + ". Families without a forest (detector.train.no_forest): "
        + (", ".join(training["settings"].get("no_forest", ())) or "none")
        + ".",
        "",
        "## Data",
        "",
        "| capture | split | packets | flows | risky excluded | labels |",
        "|---|---|---:|---:|---:|---|",
    ]
    for d in training["data"]:
        labels = ", ".join(f"{k} {v}" for k, v in sorted(d["labels"].items()))
        lines.append(
            f"| {d['capture']} | {'held out' if d['held_out'] else 'train'} | "
            f"{d['packets']} | {d['flows']} | {d['excluded_risky']} | {labels} |"
        )
    lines += [
        "",
        "## Held-out results per family",
        "",
        "| family | positives | precision | recall | F1 | FPR benign | nodes | fit s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family, m in metrics["families"].items():
        if "precision" in m:
            lines.append(
                f"| {family} | {m['positives']} | {m['precision']:.3f} | "
                f"{m['recall']:.3f} | {m['f1']:.3f} | {m['fpr_benign']:.4f} | "
                f"{m['nodes']} | {m['fit_s']} |"
            )
        else:
            lines.append(f"| {family} | - | - | - | - | - | {m['nodes']} | {m['fit_s']} |")
    if "by_source" in metrics:
        lines += [
            "",
            "## Held-out alert rates by data source",
            "",
            "Share of each family's held-out flows at or above the threshold, by the "
            "forests alone (ml) and by the final score max(fast, ml); for benign flows "
            "this is the false-positive rate.",
            "",
            "| source | family | flows | ml | final |",
            "|---|---|---:|---:|---:|",
        ]
        for src, rows in metrics["by_source"].items():
            for fam, r in rows.items():
                lines.append(f"| {src} | {fam} | {r['flows']} | {r['ml']:.4f} | {r['final']:.4f} |")
    if "confusion" in metrics:
        classes = metrics["confusion"]["classes"]
        lines += [
            "",
            "## Confusion (rows: true, columns: detected)",
            "",
            "| true \\ detected | " + " | ".join(classes) + " |",
            "|---|" + "---:|" * len(classes),
        ]
        for name, row in zip(classes, metrics["confusion"]["matrix"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
        lines.append(
            f"False-positive rate on benign held-out flows, any family: "
            f"{metrics['fpr_benign_any_family']:.4f}"
        )
    lines += ["", "## Top features per family (impurity importance)", ""]
    for family, forest in forests.items():
        order = np.argsort(-forest.feature_importances_)[:8]
        top = ", ".join(f"{FEATURES[k]} {forest.feature_importances_[k]:.3f}" for k in order)
        lines.append(f"- **{family}**: {top}")
    if "compile_and_load_s" in metrics:
        lines += ["", f"Compile and load of all families: {metrics['compile_and_load_s']} s."]
    return "\n".join(lines) + "\n"
