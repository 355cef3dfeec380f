"""Scores for a batch of flows: family forests, ``max(fast, ml)``, label, explanation.

For a float32 feature matrix and the sniffer's fast scores::

    family_scores  one column per family forest (LoadedBundle.predict)
    ml_score       max over families; ml_family the family that gave it
    final_score    max(fast_score, ml_score); family is ml_family, or the fast rule's
                   family when fast_score is higher (ties go to the forest)
    label          BENIGN below the family's alert threshold (thresholds.alert_per_family,
                   else thresholds.alert), MALICIOUS at or above the family's block
                   threshold, SUSPICIOUS between. A fast rule alone does not block: when
                   the rule scored higher than the forests and the forests scored under
                   thresholds.alert, the label is at most SUSPICIOUS, unless the
                   verdict's family is in thresholds.fast_rule_alone_blocks (or the older
                   thresholds.block_on_fast_rule_alone, every family, is true)

Explanations: for each flow, the features of its family's forest weighted by the forest's
importance times how far the flow's value lies from benign traffic (``|x - median| /
scale``, capped at 10, with median and scale of benign training flows from the bundle).
A feature the forest relies on and that is far from normal ranks first. This is a cheap
per-flow ranking, not an exact attribution (no SHAP on the hot path).

With an anomaly model (anomaly/, ``anomaly.enabled``), its score s(x) is one more column,
family ``anomaly``, and counts only where it reaches ``anomaly.alert_threshold`` (ordinary
flows score around 0.5, so the raw score would trip thresholds.alert): there the label is
at least SUSPICIOUS, final_score becomes s when s is higher and the forests did not block
(family ``anomaly``), and with ``anomaly.block`` a flow at or above thresholds.block is
MALICIOUS. ml_score stays the forests' maximum; model_version is
``<bundle>+anomaly-<version>``. Without an anomaly model nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, overload

import numpy as np
import numpy.typing as npt

from base.errors import ConfigError
from detector.bundle import LoadedBundle, load_bundle
from detector.config import DetectorConfig, ThresholdsConfig
from detector.families import ANOMALY, FAMILIES, FAST_RULE_FAMILY
from detector.features import FEATURES
from native._scoring import top_features
from proto.events_pb2 import LABEL_BENIGN, LABEL_MALICIOUS, LABEL_SUSPICIOUS

__all__ = [
    "LABEL_NAMES",
    "AnomalyModel",
    "AnomalyScoring",
    "Scorer",
    "Scores",
    "default_scorer",
    "label_flows",
]

LABEL_NAMES = {LABEL_BENIGN: "benign", LABEL_SUSPICIOUS: "suspicious", LABEL_MALICIOUS: "malicious"}
_DEVIATION_CAP = 10.0

F32 = npt.NDArray[np.float32]


class AnomalyModel(Protocol):
    """What scoring needs of an anomaly model (detector.anomaly_model.LoadedAnomalyModel)."""

    @property
    def version(self) -> str: ...

    def score(self, x: F32) -> F32: ...


@dataclass(frozen=True)
class AnomalyScoring:
    """An anomaly model and how its score counts (anomaly.alert_threshold, anomaly.block)."""

    model: AnomalyModel
    alert_threshold: float
    block: bool = False


@dataclass(frozen=True)
class Scores:
    """Scores of n flows, as columns."""

    families: tuple[str, ...]
    family_scores: F32  # (n, len(families))
    ml_score: F32
    ml_family: list[str]
    fast_score: F32
    fast_rule: list[str]
    final_score: F32
    family: list[str]
    label: npt.NDArray[np.int32]
    top_features: TopFeatures  # (name, value, weight) per flow, highest weight first
    model_version: str

    def __len__(self) -> int:
        return len(self.final_score)

    def take(self, idx: npt.NDArray[np.intp]) -> Scores:
        """The scores of the flows at ``idx``, in that order (verdicts for a few flows)."""
        pick = idx.tolist()
        top = self.top_features
        return replace(
            self,
            family_scores=self.family_scores[idx],
            ml_score=self.ml_score[idx],
            ml_family=[self.ml_family[i] for i in pick],
            fast_score=self.fast_score[idx],
            fast_rule=[self.fast_rule[i] for i in pick],
            final_score=self.final_score[idx],
            family=[self.family[i] for i in pick],
            label=self.label[idx],
            top_features=TopFeatures(top.indices[idx], top.values[idx], top.weights[idx]),
        )


class Scorer:
    """Scores feature matrices with one loaded bundle and the configured thresholds."""

    def __init__(
        self,
        bundle: LoadedBundle,
        thresholds: ThresholdsConfig,
        top_k: int = 5,
        anomaly: AnomalyScoring | None = None,
    ) -> None:
        self.bundle = bundle
        self.anomaly = anomaly
        self.thresholds = thresholds
        self.top_k = max(0, min(top_k, len(FEATURES)))
        for key in ("block_per_family", "alert_per_family"):
            unknown = set(getattr(thresholds, key)) - set(FAMILIES)
            if unknown:
                raise ConfigError(
                    f"detector.thresholds.{key}: unknown families {sorted(unknown)} "
                    f"(families: {', '.join(FAMILIES)})"
                )
        # Importances of the fast rules' families, for flows where the rule wins and its
        # family has no forest: the mean over forests.
        self._mean_importance = bundle.importances.mean(axis=0)
        self._scale = np.where(bundle.scale > 0, bundle.scale, 1.0)

    def score(
        self,
        x: F32,
        fast_score: npt.ArrayLike | None = None,
        fast_rule: Sequence[str] | None = None,
    ) -> Scores:
        n = len(x)
        fams = self.bundle.families
        fam_scores = self.bundle.predict(x)
        if fams:
            best = np.argmax(fam_scores, axis=1)
            ml = fam_scores[np.arange(n), best]
            ml_family = np.array(fams, dtype=object)[best].tolist()
        else:
            ml = np.zeros(n, dtype=np.float32)
            ml_family = [""] * n
        fast = np.zeros(n, np.float32) if fast_score is None else np.asarray(fast_score, np.float32)
        rules = list(fast_rule) if fast_rule is not None else [""] * n
        final = np.maximum(fast, ml)
        # Per flow: the fast rule's family where the rule scored higher, else the forest's,
        # made through tables of the distinct values; label_flows takes that family's
        # thresholds.
        ml_fam = np.array(ml_family, dtype=object).reshape(n)
        rule_fam = _lookup(rules, lambda r: FAST_RULE_FAMILY.get(r, ""))
        from_rule = (fast > ml) & _lookup(rules, lambda r: r in FAST_RULE_FAMILY).astype(bool)
        family_arr = np.where(from_rule, rule_fam, ml_fam)
        family: list[str] = family_arr.tolist()
        label = label_flows(self.thresholds, final, ml, fast, family)
        version = self.bundle.version
        if self.anomaly is not None:
            fams, fam_scores, final = self._add_anomaly(x, fams, fam_scores, final, family, label)
            version = f"{version}+anomaly-{self.anomaly.model.version}"
        return Scores(
            families=fams,
            family_scores=fam_scores,
            ml_score=ml.astype(np.float32),
            ml_family=ml_family,
            fast_score=fast,
            fast_rule=rules,
            final_score=final.astype(np.float32),
            family=family,
            label=label,
            top_features=self._explain(x, family),
            model_version=version,
        )

    def _add_anomaly(
        self,
        x: F32,
        fams: tuple[str, ...],
        fam_scores: F32,
        final: npt.NDArray[np.float32],
        family: list[str],
        label: npt.NDArray[np.int32],
    ) -> tuple[tuple[str, ...], F32, npt.NDArray[np.float32]]:
        """The anomaly column; ``family`` and ``label`` are updated in place."""
        assert self.anomaly is not None
        a = self.anomaly.model.score(x).astype(np.float32)
        alerting = a >= self.anomaly.alert_threshold
        take = alerting & (a > final) & (label != LABEL_MALICIOUS)
        for i in np.flatnonzero(take).tolist():
            family[i] = ANOMALY
        final = np.where(take, a, final).astype(np.float32)
        label[alerting & (label == LABEL_BENIGN)] = LABEL_SUSPICIOUS
        if self.anomaly.block:
            label[take & (a >= self.thresholds.block)] = LABEL_MALICIOUS
        scores = np.column_stack([fam_scores, a]).astype(np.float32)
        return (*fams, ANOMALY), scores, final

    def _explain(self, x: F32, family: list[str]) -> TopFeatures:
        n = len(x)
        k = self.top_k
        if n == 0 or k == 0:
            empty = np.zeros((n, 0))
            return TopFeatures(empty.astype(np.intp), empty, empty)
        index = {f: i for i, f in enumerate(self.bundle.families)}
        rows = _lookup(family, lambda f: index.get(f, -1)).astype(np.intp)
        top, picked = self._top_native(x, rows, k)
        totals = picked.sum(axis=1, keepdims=True)
        shares = np.divide(picked, totals, out=np.zeros_like(picked), where=totals > 0)
        return TopFeatures(top, np.take_along_axis(x, top, axis=1), shares)

    def _top_native(
        self, x: F32, rows: npt.NDArray[np.intp], k: int
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """Each row's k largest weights (module doc), descending, and their feature indices:
        native/scoring.c in one pass per row. Rows it cannot order as NumPy would (equal
        weights at the top, a NaN) are taken from :meth:`_top_numpy`, row for row the
        same as NumPy on the whole batch, since argpartition works on each row alone."""
        x = np.ascontiguousarray(x)
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != len(self.bundle.center):
            return self._top_numpy(x, rows, k)
        top = np.empty((len(x), k), dtype=np.int64)
        picked = np.empty((len(x), k), dtype=np.float64)
        tied = np.empty(len(x), dtype=np.uint8)
        n_tied = top_features(
            x,
            np.ascontiguousarray(rows, dtype=np.int64),
            np.ascontiguousarray(self.bundle.importances, dtype=np.float64),
            np.ascontiguousarray(self._mean_importance, dtype=np.float64),
            np.ascontiguousarray(self.bundle.center, dtype=np.float64),
            np.ascontiguousarray(self._scale, dtype=np.float64),
            _DEVIATION_CAP,
            k,
            top,
            picked,
            tied,
        )
        if n_tied:
            redo = np.flatnonzero(tied)
            top[redo], picked[redo] = self._top_numpy(x[redo], rows[redo], k)
        return top.astype(np.intp, copy=False), picked

    def _top_numpy(
        self, x: npt.NDArray[Any], rows: npt.NDArray[np.intp], k: int
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """:meth:`_top_native` in NumPy: the definition (argpartition, then a stable argsort
        of those k), and where ties make the order NumPy's own."""
        n = len(x)
        imp = np.where(
            (rows >= 0)[:, None],
            self.bundle.importances[np.maximum(rows, 0)],
            self._mean_importance[None, :],
        )
        deviation = np.minimum(np.abs(x - self.bundle.center) / self._scale, _DEVIATION_CAP)
        weight = imp * deviation
        # The k largest per row (argpartition), then those k in descending order.
        part = np.argpartition(-weight, k - 1, axis=1)[:, :k] if k < weight.shape[1] else None
        cand = part if part is not None else np.tile(np.arange(weight.shape[1]), (n, 1))
        order = np.argsort(-np.take_along_axis(weight, cand, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(cand, order, axis=1)
        return top, np.take_along_axis(weight, top, axis=1)


def label_flows(
    thresholds: ThresholdsConfig,
    final: npt.ArrayLike,
    ml: npt.ArrayLike,
    fast: npt.ArrayLike,
    family: Sequence[str],
) -> npt.NDArray[np.int32]:
    """Labels from the scores and the verdict families (module doc): the family's alert and
    block thresholds, and no block by a fast rule alone unless configured for the family."""
    final_a = np.asarray(final, dtype=np.float32)
    ml_a = np.asarray(ml, dtype=np.float32)
    fast_a = np.asarray(fast, dtype=np.float32)
    alert = _lookup(family, thresholds.alert_of).astype(np.float64)
    block = _lookup(family, thresholds.block_of).astype(np.float64)
    label = np.full(len(final_a), LABEL_BENIGN, dtype=np.int32)
    label[final_a >= alert] = LABEL_SUSPICIOUS
    malicious = final_a >= block
    # The rule won and the forests call the flow benign: alert, do not block, unless the
    # verdict's family (the rule's, since it won) may block on its fast rule alone.
    rule_alone = (fast_a > ml_a) & (ml_a < thresholds.alert)
    if rule_alone.any():
        may_block = _lookup(family, thresholds.fast_rule_alone_may_block).astype(bool)
        malicious &= ~(rule_alone & ~may_block)
    label[malicious] = LABEL_MALICIOUS
    return label


def _lookup(values: Sequence[str], fn: Any) -> npt.NDArray[Any]:
    """``fn(v)`` for every value, as an object array, calling ``fn`` once per distinct value."""
    table = {v: fn(v) for v in set(values)}
    out = np.empty(len(values), dtype=object)
    out[:] = list(map(table.__getitem__, values))
    return out


def default_scorer(cfg: DetectorConfig) -> Scorer:
    """The shipped model bundle (detector/bundle) with ``cfg``'s thresholds and
    explanation size: what the offline paths score with (``mld rag import``, ``mld
    watch run``). ``cfg.bundle_dir`` is not read; ``mld detector analyze --bundle`` and
    ``mld detector run`` load the configured bundle themselves."""
    return Scorer(load_bundle(), cfg.thresholds, cfg.top_features)


class TopFeatures(Sequence[list[tuple[str, float, float]]]):
    """Each flow's explanation, ``(name, value, weight)`` highest weight first.

    Kept as three (flows, k) arrays; a flow's list is built when it is asked for, since
    most flows of a capture are never written out with their explanation.
    """

    def __init__(
        self, indices: npt.NDArray[np.intp], values: npt.NDArray[Any], weights: npt.NDArray[Any]
    ) -> None:
        self.indices = indices
        self.values = values
        self.weights = weights

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> list[tuple[str, float, float]]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[tuple[str, float, float]]]: ...

    def __getitem__(
        self, i: int | slice
    ) -> list[tuple[str, float, float]] | list[list[tuple[str, float, float]]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        idx, vals, ws = self.indices[i].tolist(), self.values[i].tolist(), self.weights[i].tolist()
        return [(FEATURES[j], v, w) for j, v, w in zip(idx, vals, ws, strict=True) if w > 0]
