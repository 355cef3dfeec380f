"""One anomaly model: a folder with a treelite checkpoint and its manifest.

Layout of a version folder (``<model_dir>/versions/<version>/``)::

    model.tl     treelite 4.1 checkpoint: the isolation trees, mean path length E[h(x)]
    model.json   format, version, created, feature list and schema hash, n_trees,
                 max_samples, the checkpoint's sha256, probe rows with scikit-learn's
                 scores, and the training record (window, rows, timings, holdout rates)

:func:`load_model` refuses a folder (``ModelError``, with the reason) whose manifest is
unreadable, whose feature list is not this detector's, whose checkpoint is missing or does
not match its hash, that does not compile, or whose compiled trees do not reproduce the
probe scores to :data:`PROBE_TOLERANCE`. Libraries are compiled into the detector's model
cache, named by content (detector/compile.py), so a model is compiled once per host.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anomaly.isolation import score_from_path
from base.errors import ModelError
from detector.bundle import (
    DIRECT_MAX_ROWS,
    RowPredictor,
    atomic_write,
    default_cache_dir,
    load_checked_model,
)
from detector.compile import CompileOptions
from detector.features import FEATURES, SCHEMA_HASH

__all__ = [
    "MODEL_FORMAT",
    "PROBE_TOLERANCE",
    "LoadedAnomalyModel",
    "load_model",
    "write_model",
]

log = logging.getLogger(__name__)

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
