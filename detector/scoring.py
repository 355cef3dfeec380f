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

from collections.abc import Callable, Sequence
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
    "ScoreCodes",
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
    # The same family and rule columns as integer codes (Scorer.score fills it; None when
    # the Scores were built from lists elsewhere): lets writers index their string
    # tables once per distinct name instead of once per flow (detector/verdictpack.py).
    codes: ScoreCodes | None = None

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
            top_features=top.take(idx),
            codes=None if self.codes is None else self.codes.take(idx),
        )


@dataclass(frozen=True)
class ScoreCodes:
    """:class:`Scores`' ``family``, ``ml_family`` and ``fast_rule`` as codes: ``family[i]``
    is ``names[self.family[i]]``, ``fast_rule[i]`` is ``rules[self.rule[i]]``."""

    names: tuple[str, ...]
    family: npt.NDArray[np.intp]
    ml_family: npt.NDArray[np.intp]
    rules: tuple[str, ...]
    rule: npt.NDArray[np.intp]

    def take(self, idx: npt.NDArray[np.intp]) -> ScoreCodes:
        return replace(self, family=self.family[idx], ml_family=self.ml_family[idx],
                       rule=self.rule[idx])  # fmt: skip


class _FamilyTable:
    """Every family a verdict can name, as codes, with each family's thresholds and
    explanation row as arrays indexed by code: labels and explanations are then NumPy
    over the batch, with no per-flow look-up by name. Codes 0..len(bundle families)-1 are
    the bundle's families in its order (so argmax over the forests is already a code)."""

    def __init__(
        self,
        bundle_families: Sequence[str],
        thresholds: ThresholdsConfig,
        extra: Sequence[str] = (),
    ) -> None:
        names = list(bundle_families)
        for name in (*FAMILIES, *FAST_RULE_FAMILY.values(), ANOMALY, "", *extra):
            if name not in names:
                names.append(name)
        self.thresholds = thresholds
        self.names = tuple(names)
        self.code = {name: i for i, name in enumerate(names)}
        self.objects = np.array(names, dtype=object)
        self.alert = np.array([thresholds.alert_of(f) for f in names], dtype=np.float64)
        self.block = np.array([thresholds.block_of(f) for f in names], dtype=np.float64)
        self.may_block = np.array(
            [thresholds.fast_rule_alone_may_block(f) for f in names], dtype=bool
        )
        # The explanation's importances: the family's forest, else (-1) the forests' mean.
        n_forests = len(bundle_families)
        self.explain_row = np.array(
            [i if i < n_forests else -1 for i in range(len(names))], dtype=np.intp
        )
        # A fast rule's family code, -1 for a rule that has none (it never names the family).
        self._rule_code: dict[str, int] = {}

    def rule_codes(
        self, rules: Sequence[str]
    ) -> tuple[tuple[str, ...], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The distinct rules, each record's index into them, and each record's rule family
        code (-1: no family)."""
        distinct = dict.fromkeys(rules)
        index = {r: i for i, r in enumerate(distinct)}
        fam = np.array(
            [self.code[FAST_RULE_FAMILY[r]] if r in FAST_RULE_FAMILY else -1 for r in distinct],
            dtype=np.intp,
        )
        idx = _codes(rules, index)
        return tuple(distinct), idx, fam[idx] if len(fam) else idx

    def label(
        self,
        final: npt.NDArray[np.float32],
        ml: npt.NDArray[np.float32],
        fast: npt.NDArray[np.float32],
        code: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.int32]:
        """:func:`label_flows` over family codes."""
        label = np.full(len(final), LABEL_BENIGN, dtype=np.int32)
        label[final >= self.alert[code]] = LABEL_SUSPICIOUS
        malicious = final >= self.block[code]
        # The rule won and the forests call the flow benign: alert, do not block, unless
        # the verdict's family (the rule's, since it won) may block on its fast rule alone.
        rule_alone = (fast > ml) & (ml < self.thresholds.alert)
        if rule_alone.any():
            malicious &= ~(rule_alone & ~self.may_block[code])
        label[malicious] = LABEL_MALICIOUS
        return label


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
        self._families: _FamilyTable | None = None

    def _table(self) -> _FamilyTable:
        """The family table of the current bundle and thresholds (built once)."""
        table = self._families
        if (
            table is None
            or table.thresholds is not self.thresholds
            or table.names[: len(self.bundle.families)] != self.bundle.families
        ):
            table = self._families = _FamilyTable(self.bundle.families, self.thresholds)
        return table

    def score(
        self,
        x: F32,
        fast_score: npt.ArrayLike | None = None,
        fast_rule: Sequence[str] | None = None,
    ) -> Scores:
        n = len(x)
        table = self._table()
        fams = self.bundle.families
        fam_scores = self.bundle.predict(x)
        if fams:
            best = np.argmax(fam_scores, axis=1)  # a family's column is its code
            ml = np.take_along_axis(fam_scores, best[:, None], axis=1).reshape(n)
        else:
            best = np.full(n, table.code[""], dtype=np.intp)
            ml = np.zeros(n, dtype=np.float32)
        fast = np.zeros(n, np.float32) if fast_score is None else np.asarray(fast_score, np.float32)
        rules = list(fast_rule) if fast_rule is not None else [""] * n
        rule_names, rule_idx, rule_fam = table.rule_codes(rules)
        final = np.maximum(fast, ml)
        # Per flow: the fast rule's family where the rule scored higher (and the rule has a
        # family), else the forest's; the labels take that family's thresholds. All of it
        # over codes (_FamilyTable): no per-flow look-up by name.
        code = np.where((fast > ml) & (rule_fam >= 0), rule_fam, best)
        label = table.label(final, ml, fast, code)
        version = self.bundle.version
        if self.anomaly is not None:
            fams, fam_scores, final = self._add_anomaly(x, fams, fam_scores, final, code, label)
            version = f"{version}+anomaly-{self.anomaly.model.version}"
        return Scores(
            families=fams,
            family_scores=fam_scores,
            ml_score=ml.astype(np.float32),
            ml_family=table.objects[best].tolist(),
            fast_score=fast,
            fast_rule=rules,
            final_score=final.astype(np.float32),
            family=table.objects[code].tolist(),
            label=label,
            top_features=self._explain_later(x, table.explain_row[code]),
            model_version=version,
            codes=ScoreCodes(table.names, code, best, rule_names, rule_idx),
        )

    def _add_anomaly(
        self,
        x: F32,
        fams: tuple[str, ...],
        fam_scores: F32,
        final: npt.NDArray[np.float32],
        code: npt.NDArray[np.intp],
        label: npt.NDArray[np.int32],
    ) -> tuple[tuple[str, ...], F32, npt.NDArray[np.float32]]:
        """The anomaly column; the family ``code`` and ``label`` are updated in place."""
        assert self.anomaly is not None
        a = self.anomaly.model.score(x).astype(np.float32)
        alerting = a >= self.anomaly.alert_threshold
        take = alerting & (a > final) & (label != LABEL_MALICIOUS)
        code[take] = self._table().code[ANOMALY]
        final = np.where(take, a, final).astype(np.float32)
        label[alerting & (label == LABEL_BENIGN)] = LABEL_SUSPICIOUS
        if self.anomaly.block:
            label[take & (a >= self.thresholds.block)] = LABEL_MALICIOUS
        scores = np.column_stack([fam_scores, a]).astype(np.float32)
        return (*fams, ANOMALY), scores, final

    def _explain_later(self, x: F32, rows: npt.NDArray[np.intp]) -> TopFeatures:
        """:meth:`_explain_rows`, deferred until read and then only for the flows kept."""

        def make(sub: npt.NDArray[np.intp] | None) -> _TopArrays:
            top = (
                self._explain_rows(x, rows)
                if sub is None
                else self._explain_rows(x[sub], rows[sub])
            )
            return top.indices, top.values, top.weights

        return TopFeatures.deferred(len(x), make)

    def _explain_rows(self, x: F32, rows: npt.NDArray[np.intp]) -> TopFeatures:
        """Explanations of flows given the importance row of each (the family's forest, -1
        for the forests' mean)."""
        n = len(x)
        k = self.top_k
        if n == 0 or k == 0:
            empty = np.zeros((n, 0))
            return TopFeatures(empty.astype(np.intp), empty, empty)
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
    # label_flows takes any family name: the table knows the batch's too.
    table = _FamilyTable((), thresholds, extra=sorted(set(family)))
    return table.label(
        np.asarray(final, dtype=np.float32),
        np.asarray(ml, dtype=np.float32),
        np.asarray(fast, dtype=np.float32),
        _codes(family, table.code),
    )


def _codes(values: Sequence[str], table: dict[str, int]) -> npt.NDArray[np.intp]:
    """``table[v]`` for every value, as an int array (the look-ups run in C: map, fromiter)."""
    return np.fromiter(map(table.__getitem__, values), dtype=np.intp, count=len(values))


def default_scorer(cfg: DetectorConfig) -> Scorer:
    """The shipped model bundle (detector/bundle) with ``cfg``'s thresholds and
    explanation size: what the offline paths score with (``mld rag import``, ``mld
    watch run``). ``cfg.bundle_dir`` is not read; ``mld detector analyze --bundle`` and
    ``mld detector run`` load the configured bundle themselves."""
    return Scorer(load_bundle(), cfg.thresholds, cfg.top_features)


class TopFeatures(Sequence[list[tuple[str, float, float]]]):
    """Each flow's explanation, ``(name, value, weight)`` highest weight first.

    Kept as three (flows, k) arrays; a flow's list is built when it is asked for, since
    most flows of a capture are never written out with their explanation. The arrays
    themselves may be deferred (:meth:`deferred`): Scorer.score then computes them when
    first read, and only for the flows a :meth:`take` kept (the live detector without
    scored events or EVE writes explanations for the verdicts it sends the firewall
    only). A flow's explanation depends on that flow alone, so both give the same rows.
    """

    def __init__(
        self, indices: npt.NDArray[np.intp], values: npt.NDArray[Any], weights: npt.NDArray[Any]
    ) -> None:
        self._arrays: _TopArrays | None = (indices, values, weights)
        self._make: Callable[[npt.NDArray[np.intp] | None], _TopArrays] | None = None
        self._n = len(indices)

    @classmethod
    def deferred(
        cls, n: int, make: Callable[[npt.NDArray[np.intp] | None], _TopArrays]
    ) -> TopFeatures:
        """``n`` flows' explanations, made by ``make(rows)`` (None: every flow) when read."""
        top = cls.__new__(cls)
        top._arrays, top._make, top._n = None, make, n
        return top

    def _get(self) -> _TopArrays:
        if self._arrays is None:
            assert self._make is not None
            self._arrays, self._make = self._make(None), None
        return self._arrays

    @property
    def indices(self) -> npt.NDArray[np.intp]:
        return self._get()[0]

    @property
    def values(self) -> npt.NDArray[Any]:
        return self._get()[1]

    @property
    def weights(self) -> npt.NDArray[Any]:
        return self._get()[2]

    def take(self, idx: npt.NDArray[np.intp]) -> TopFeatures:
        """The explanations of the flows at ``idx``; still deferred if these were."""
        make = self._make
        if self._arrays is None and make is not None:
            return TopFeatures.deferred(
                len(idx), lambda sub: make(idx if sub is None else idx[sub])
            )
        i, v, w = self._get()
        return TopFeatures(i[idx], v[idx], w[idx])

    def __len__(self) -> int:
        return self._n

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


_TopArrays = tuple[npt.NDArray[np.intp], npt.NDArray[Any], npt.NDArray[Any]]
