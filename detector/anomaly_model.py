"""Serving the anomaly model: the published version folder, its score, the pointer to it.

anomaly/ trains the model (``mld anomaly train | serve``); the detector only loads a
finished, checked one and scores with it (family ``anomaly``, detector/scoring.py). This
module is that serving side, and the one definition of the folders both sides share.

The model folder (``anomaly.model_dir``, default ``<node.state_dir>/anomaly``)::

    versions/<version>/   one folder per trained model (below)
    current               the serving version's name, one line; replaced by rename, so a
                          reader sees the old name or the new one, never half of one

Its publishing side (versions, pruning, the decision history, the trainer's lock) is
anomaly/versions.py. The detector watches ``current`` (detector/reload.py with
:func:`pointer_signature`) and loads the folder it names in the background.

A version folder (``<model_dir>/versions/<version>/``)::

    model.tl     treelite 4.1 checkpoint: the isolation trees, mean path length E[h(x)]
    model.json   format, version, created, feature list and schema hash, n_trees,
                 max_samples, the checkpoint's sha256, probe rows with scikit-learn's
                 scores, and the training record (window, rows, timings, holdout rates)

:func:`load_model` refuses a folder (``ModelError``, with the reason) whose manifest is
unreadable, whose feature list is not this detector's, whose checkpoint is missing or does
not match its hash, that does not compile, or whose compiled trees do not reproduce the
probe scores to :data:`PROBE_TOLERANCE`. Libraries are compiled into the detector's model
cache, named by content (detector/compile.py), so a model is compiled once per host.

The score of a flow is ``s(x) = 2 ** (-E[h(x)] / c(psi))`` (Liu, Ting and Zhou 2008), with
``psi`` the rows each tree was grown on (``max_samples``) and ``c(n)`` the average path
length of an unsuccessful search in a binary search tree of n keys: about 0.5 and below
for ordinary flows, towards 1 for flows that stand apart (anomaly/isolation.py builds
the trees).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from base.errors import ModelError
from detector.bundle import (
    DIRECT_MAX_ROWS,
    RowPredictor,
    atomic_write,
    default_cache_dir,
    load_checked_model,
)
from detector.compile import CompileOptions
from detector.config import AnomalyConfig, DetectorConfig
from detector.features import FEATURES, SCHEMA_HASH
from detector.reload import BundleWatcher, Signature
from detector.scoring import AnomalyModel, AnomalyScoring

__all__ = [
    "CURRENT",
    "MODEL_FORMAT",
    "PROBE_TOLERANCE",
    "LoadedAnomalyModel",
    "anomaly_serving",
    "average_path_length",
    "current_version",
    "load_current",
    "load_model",
    "pointer_signature",
    "score_from_path",
    "version_folder",
    "write_model",
]

log = logging.getLogger(__name__)

CURRENT = "current"


def average_path_length(n: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``c(n)``: 0 for n <= 1, 1 for n == 2, else ``2 H(n-1) - 2 (n-1) / n`` (as sklearn)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def score_from_path(mean_path: npt.ArrayLike, max_samples: int) -> npt.NDArray[np.float32]:
    """The anomaly score ``2 ** (-E[h] / c(max_samples))`` of mean path lengths."""
    c = float(average_path_length(np.array([max_samples]))[0])
    h = np.asarray(mean_path, dtype=np.float64)
    if c <= 0:
        return np.ones(h.shape, dtype=np.float32)
    return np.power(2.0, -h / c).astype(np.float32)


MODEL_FORMAT = 1
MANIFEST = "model.json"
CHECKPOINT = "model.tl"
# Largest difference allowed between compiled and scikit-learn scores on the probe rows.
PROBE_TOLERANCE = 1e-5


def write_model(
    folder: Path,
    model: Any,
    *,
    version: str,
    created: str,
    n_trees: int,
    max_samples: int,
    probe_rows: npt.NDArray[np.float32],
    probe_scores: npt.NDArray[np.float64],
    training: dict[str, Any],
) -> None:
    """Write a treelite ``model`` and its manifest (manifest last) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = model.serialize_bytes()
    atomic_write(folder / CHECKPOINT, blob)
    manifest = {
        "format": MODEL_FORMAT,
        "version": version,
        "created": created,
        "schema_hash": SCHEMA_HASH,
        "features": list(FEATURES),
        "n_trees": n_trees,
        "max_samples": max_samples,
        "model": CHECKPOINT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "probe": {
            "rows": np.asarray(probe_rows, dtype=np.float32).tolist(),
            "scores": [float(s) for s in probe_scores],
        },
        "training": training,
    }
    atomic_write(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


@dataclass(frozen=True)
class _Manifest:
    version: str
    created: str
    n_trees: int
    max_samples: int
    sha256: str
    probe_rows: npt.NDArray[np.float32]
    probe_scores: npt.NDArray[np.float64]
    training: dict[str, Any]


def _read_manifest(folder: Path) -> _Manifest:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder} is not an anomaly model (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None
    try:
        if data["format"] != MODEL_FORMAT:
            raise ModelError(
                f"{path}: anomaly model format {data['format']} is not {MODEL_FORMAT}: "
                "train it again with this version (mld anomaly train)"
            )
        if tuple(data["features"]) != FEATURES:
            raise ModelError(
                f"{folder}: the model's feature list does not match this detector's schema "
                f"{SCHEMA_HASH} (model {data.get('schema_hash')}): train it again "
                "(mld anomaly train)"
            )
        rows = np.array(data["probe"]["rows"], dtype=np.float32).reshape(-1, len(FEATURES))
        return _Manifest(
            version=str(data["version"]),
            created=str(data["created"]),
            n_trees=int(data["n_trees"]),
            max_samples=int(data["max_samples"]),
            sha256=str(data["sha256"]),
            probe_rows=rows,
            probe_scores=np.array(data["probe"]["scores"], dtype=np.float64),
            training=dict(data.get("training", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None


class LoadedAnomalyModel:
    """A validated anomaly model, compiled: :meth:`score` gives s(x) in (0, 1]."""

    def __init__(self, path: Path, manifest: _Manifest, predictor: Any, rows: RowPredictor) -> None:
        self.path = path
        self.version = manifest.version
        self.created = manifest.created
        self.max_samples = manifest.max_samples
        self.training = manifest.training
        self._predictor = predictor
        self._rows = rows

    def mean_path(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """E[h(x)] per row, from the compiled trees."""
        import tl2cgen

        n = len(x)
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        if n <= DIRECT_MAX_ROWS:
            self._rows(np.array(x, dtype=np.float32, order="C"), out)
            return out
        dmat = tl2cgen.DMatrix(np.ascontiguousarray(x, dtype=np.float32), dtype="float32")
        out[:] = self._predictor.predict(dmat).reshape(-1)
        return out

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The anomaly score of each row: ``2 ** (-E[h(x)] / c(max_samples))``."""
        return score_from_path(self.mean_path(x), self.max_samples)


def load_model(
    folder: Path,
    cache_dir: Path | str | None = None,
    options: CompileOptions | None = None,
) -> LoadedAnomalyModel:
    """Validate, compile (once, cached) and load one version folder; ModelError if off."""

    folder = Path(folder)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    manifest = _read_manifest(folder)
    predictor, lib = load_checked_model(
        folder / CHECKPOINT, manifest.sha256, cache, options, 1, where=str(folder),
        what="model", fix="(a partly copied or damaged model): train again (mld anomaly train)",
    )  # fmt: skip
    model = LoadedAnomalyModel(folder, manifest, predictor, RowPredictor(lib))
    if len(manifest.probe_rows):
        for rows in (manifest.probe_rows, manifest.probe_rows[:DIRECT_MAX_ROWS]):
            got = model.score(rows).astype(np.float64)
            worst = float(np.max(np.abs(got - manifest.probe_scores[: len(rows)])))
            if worst > PROBE_TOLERANCE:
                raise ModelError(
                    f"{folder}: the compiled model differs from the trained one by {worst:.2e}"
                    f" on the probe rows (tolerance {PROBE_TOLERANCE}): train again"
                )
    log.info("loaded anomaly model %s from %s", manifest.version, folder)
    return model


def pointer_signature(model_dir: Path) -> Signature:
    """What the detector's watcher compares: the ``current`` file's name, size, mtime."""
    try:
        st = os.stat(Path(model_dir) / CURRENT)
    except OSError:
        return None
    return ((CURRENT, st.st_size, st.st_mtime_ns),)


def current_version(model_dir: Path) -> str:
    """The serving version's name, or '' when none was published."""
    try:
        return (Path(model_dir) / CURRENT).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def version_folder(model_dir: Path, version: str) -> Path:
    """``<model_dir>/versions/<version>``; ModelError for a name that is not one folder."""
    if not version or "/" in version or version.startswith("."):
        raise ModelError(f"{model_dir}: bad anomaly model version name {version!r}")
    return Path(model_dir) / "versions" / version


def load_current(model_dir: Path, cache_dir: Path | str | None = None) -> LoadedAnomalyModel:
    """Load the version ``current`` names; ModelError if none or it does not load."""
    version = current_version(model_dir)
    if not version:
        raise ModelError(
            f"no anomaly model in {model_dir} yet: run `mld anomaly train` (or `mld anomaly "
            "serve`) once the event store holds anomaly.min_flows flows"
        )
    folder = version_folder(model_dir, version)
    model = load_model(folder, cache_dir)
    if model.version != version:
        raise ModelError(f"{folder}: holds version {model.version}, {CURRENT} names {version}")
    return model


def anomaly_serving(
    config: DetectorConfig, anomaly: AnomalyConfig | None, state_dir: str
) -> tuple[AnomalyScoring | None, BundleWatcher[AnomalyModel] | None]:
    """The serving anomaly model (None before the first is published) and its watcher;
    (None, None) unless ``anomaly.enabled``."""
    if anomaly is None or not anomaly.enabled:
        return None, None
    anomaly.check()
    model_dir = anomaly.path(state_dir)
    cache = config.model_cache_dir or None

    def load(_path: Path) -> AnomalyModel:
        return load_current(model_dir, cache)

    signature = pointer_signature(model_dir)
    scoring = None
    try:
        model = load(model_dir)
        scoring = AnomalyScoring(model, anomaly.alert_threshold, anomaly.block)
    except ModelError as exc:
        log.warning("serving without an anomaly model for now: %s", exc)
    watcher = None
    if config.reload_interval_s > 0:
        watcher = BundleWatcher(
            model_dir,
            load,
            config.reload_interval_s,
            current_version=scoring.model.version if scoring is not None else "",
            signature=signature,
            sign=pointer_signature,
            what="anomaly model",
        )
    return scoring, watcher
