"""The model bundle: a folder holding one treelite checkpoint per family and a manifest.

Layout::

    manifest.json     format, version, features (checked against detector.features),
                      per-family model file, sha256, size, importances, probe rows with
                      the training forest's probabilities, benign centre and scale of each
                      feature (for explanations), and the training record (data, metrics,
                      settings, library versions)
    <family>.tl       treelite 4.1 checkpoint of the family's forest
    REPORT.md         the training report, for people

:func:`write_bundle` writes the checkpoints first and the manifest last, each by rename,
so a watcher never sees a manifest naming files that are not there yet. :func:`load_bundle`
refuses a bundle (``ModelError``, with the reason) when the manifest is unreadable, its
feature list is not this detector's, a checkpoint is missing or does not match its hash,
it does not compile, or the compiled forest does not reproduce the probe probabilities.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from base.errors import ModelError
from detector.compile import CompileOptions, compile_model, verified_copy
from detector.families import FAMILIES
from detector.features import FEATURES, SCHEMA_HASH
from native._scoring import forest_predict

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_BUNDLE_DIR",
    "DIRECT_MAX_ROWS",
    "PROBE_TOLERANCE",
    "FamilyEntry",
    "LoadedBundle",
    "Manifest",
    "RowPredictor",
    "atomic_write",
    "default_cache_dir",
    "load_bundle",
    "load_checked_model",
    "read_manifest",
    "write_bundle",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "bundle"
# Largest difference allowed between the compiled forest and sklearn's predict_proba on
# the probe rows (float32 summation of up to a few hundred leaves).
PROBE_TOLERANCE = 1e-5
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """build/models in the source tree, or ~/.cache/mld/models when that is read-only."""
    build = Path(__file__).resolve().parents[1] / "build"
    if os.access(build if build.exists() else build.parent, os.W_OK):
        return build / "models"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mld" / "models"


@dataclass(frozen=True)
class FamilyEntry:
    """One family's forest as the manifest describes it."""

    family: str
    model: str
    sha256: str
    n_trees: int
    max_depth: int
    n_nodes: int
    importances: tuple[float, ...]
    probe_rows: tuple[tuple[float, ...], ...]
    probe_proba: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "sha256": self.sha256,
            "n_trees": self.n_trees,
            "max_depth": self.max_depth,
            "n_nodes": self.n_nodes,
            "importances": list(self.importances),
            "probe": {"rows": [list(r) for r in self.probe_rows], "proba": list(self.probe_proba)},
        }


@dataclass(frozen=True)
class Manifest:
    version: str
    created: str
    features: tuple[str, ...]
    schema_hash: str
    families: dict[str, FamilyEntry]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    training: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "version": self.version,
            "created": self.created,
            "schema_hash": self.schema_hash,
            "features": list(self.features),
            "feature_center": list(self.center),
            "feature_scale": list(self.scale),
            "families": {f: e.to_json() for f, e in self.families.items()},
            "training": self.training,
        }


def _parse(data: Mapping[str, Any], where: Path) -> Manifest:
    try:
        if data["format"] != BUNDLE_FORMAT:
            raise ModelError(
                f"{where}: bundle format {data['format']} is not {BUNDLE_FORMAT}: "
                "retrain it with this version (mld detector train)"
            )
        families = {}
        for name, e in data["families"].items():
            families[name] = FamilyEntry(
                family=name,
                model=str(e["model"]),
                sha256=str(e["sha256"]),
                n_trees=int(e["n_trees"]),
                max_depth=int(e["max_depth"]),
                n_nodes=int(e["n_nodes"]),
                importances=tuple(float(x) for x in e["importances"]),
                probe_rows=tuple(tuple(float(x) for x in r) for r in e["probe"]["rows"]),
                probe_proba=tuple(float(x) for x in e["probe"]["proba"]),
            )
        return Manifest(
            version=str(data["version"]),
            created=str(data["created"]),
            features=tuple(str(f) for f in data["features"]),
            schema_hash=str(data["schema_hash"]),
            families=families,
            center=tuple(float(x) for x in data["feature_center"]),
            scale=tuple(float(x) for x in data["feature_scale"]),
            training=dict(data.get("training", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None


def read_manifest(bundle_dir: Path) -> Manifest:
    """The manifest of a bundle, checked for form and for this detector's feature list."""
    path = Path(bundle_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{bundle_dir} is not a model bundle (no {MANIFEST}): pass a folder written by "
            "`mld detector train`, or leave detector.bundle_dir empty for the shipped bundle"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: the manifest is not a JSON object")
    manifest = _parse(data, path)
    if manifest.features != FEATURES:
        missing = [f for f in FEATURES if f not in manifest.features]
        extra = [f for f in manifest.features if f not in FEATURES]
        raise ModelError(
            f"{bundle_dir}: the bundle's feature list does not match this detector's schema "
            f"{SCHEMA_HASH} (bundle {manifest.schema_hash}; missing {missing[:5]}, "
            f"unknown {extra[:5]}{', order differs' if not (missing or extra) else ''}): "
            "retrain the bundle with this version (mld detector train)"
        )
    unknown = sorted(set(manifest.families) - set(FAMILIES))
    if unknown or not manifest.families:
        raise ModelError(
            f"{bundle_dir}: families {unknown or '(none)'} are not detector families "
            f"{list(FAMILIES)}"
        )
    n = len(FEATURES)
    if len(manifest.center) != n or len(manifest.scale) != n:
        raise ModelError(f"{path}: feature_center/feature_scale need {n} values each")
    for entry in manifest.families.values():
        if len(entry.importances) != n or any(len(r) != n for r in entry.probe_rows):
            raise ModelError(
                f"{path}: family {entry.family}: importances and probe rows need {n} values each"
            )
    return manifest


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temp file and a rename: a reader (or
    a watcher of the folder) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_bundle(
    bundle_dir: Path,
    models: Mapping[str, Any],
    entries: Mapping[str, FamilyEntry],
    center: npt.ArrayLike,
    scale: npt.ArrayLike,
    training: dict[str, Any],
    report: str = "",
    created: datetime | None = None,
) -> Manifest:
    """Write a bundle: treelite models (``family -> treelite.Model``), then the manifest.

    ``entries`` carry everything but the file name and hash, which are filled in here.
    The version is the creation time (``created``, default now) and a hash of the
    checkpoints, so writing the same models with the same ``created`` keeps the version.
    """
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    final: dict[str, FamilyEntry] = {}
    digest = hashlib.sha256()
    for family in FAMILIES:
        if family not in models:
            continue
        blob = models[family].serialize_bytes()
        name = f"{family}.tl"
        atomic_write(bundle_dir / name, blob)
        sha = hashlib.sha256(blob).hexdigest()
        digest.update(sha.encode())
        e = entries[family]
        final[family] = FamilyEntry(
            family,
            name,
            sha,
            e.n_trees,
            e.max_depth,
            e.n_nodes,
            e.importances,
            e.probe_rows,
            e.probe_proba,
        )
    now = created or datetime.now(UTC)
    manifest = Manifest(
        version=f"{now:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}",
        created=now.isoformat(timespec="seconds"),
        features=FEATURES,
        schema_hash=SCHEMA_HASH,
        families=final,
        center=tuple(float(x) for x in np.asarray(center, dtype=np.float64)),
        scale=tuple(float(x) for x in np.asarray(scale, dtype=np.float64)),
        training=training,
    )
    if report:
        atomic_write(bundle_dir / "REPORT.md", report.encode())
    text = json.dumps(manifest.to_json(), indent=1) + "\n"
    atomic_write(bundle_dir / MANIFEST, text.encode())
    return manifest


# Up to this many rows, the anomaly model (detector/anomaly_model.py) calls its forest row
# by row straight through the library's ``predict`` symbol (ctypes) instead of tl2cgen's
# Predictor: building a DMatrix and the Predictor's Python layer cost 20-35 us per call,
# the trees under 1 us per row. The bundle's forests take every batch through
# CompiledForest, which has neither cost.
DIRECT_MAX_ROWS = 16


class RowPredictor:
    """``void predict(union Entry* row, int pred_margin, float* out)`` of a tl2cgen library.

    With float32 thresholds an ``Entry`` is 4 bytes (``fvalue`` or ``missing == -1``), so a
    C-contiguous float32 row is an Entry array as it stands. Its all-ones bit pattern
    (a NaN) would read as "missing"; feature_matrix never yields NaN. ``predict`` adds the
    trees' outputs into ``out`` and then averages, so ``out`` starts at 0. The rows must be
    a copy the caller can lose: a library compiled with quantize rewrites them in place.
    """

    def __init__(self, lib: Path) -> None:
        import ctypes

        self._dll = ctypes.CDLL(str(lib))
        fn = self._dll.predict
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        fn.restype = None
        self._fn = fn

    def __call__(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
        out[:] = 0.0
        base, stride = x.ctypes.data, x.strides[0]
        out_base, out_stride = out.ctypes.data, out.strides[0]
        fn = self._fn
        for i in range(len(x)):
            fn(base + i * stride, 0, out_base + i * out_stride)


class CompiledForest:
    """A compiled forest (a tl2cgen library) over whole batches in native code
    (native/scoring.c ``forest_predict``: the library's ``predict`` per row, as tl2cgen's
    runtime calls it, without its Python layer). Loading tl2cgen's Predictor imported
    treelite and SciPy, a third of a second of every ``mld detector analyze``; this needs
    neither. Only single-output float32 forests (what detector.compile builds) are taken.
    """

    def __init__(self, lib: Path, threads: int = 1) -> None:
        import ctypes

        self.lib = lib
        self.threads = max(1, threads)
        self._dll = ctypes.CDLL(str(lib))
        int_query = ctypes.CFUNCTYPE(ctypes.c_int32)
        text_query = ctypes.CFUNCTYPE(ctypes.c_char_p)
        targets = int_query(("get_num_target", self._dll))()
        classes = (ctypes.c_int32 * max(1, targets))()
        self._dll.get_num_class.argtypes = [ctypes.c_void_p]
        self._dll.get_num_class(ctypes.addressof(classes))
        self.num_feature = int(int_query(("get_num_feature", self._dll))())
        kinds = (
            text_query(("get_threshold_type", self._dll))(),
            text_query(("get_leaf_output_type", self._dll))(),
        )
        if targets != 1 or list(classes) != [1] or kinds != (b"float32", b"float32"):
            raise ValueError(
                f"{targets} targets, classes {list(classes)}, threshold and leaf types "
                f"{kinds[0]!r}, {kinds[1]!r}: not a single-output float32 forest"
            )
        address = ctypes.cast(self._dll.predict, ctypes.c_void_p).value
        assert address is not None
        self._address: int = address

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One probability per row of ``x`` (rows x num_feature); ``x`` is never written."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_feature:
            raise ValueError(f"expected rows of {self.num_feature} features, got {x.shape}")
        out = np.empty(len(x), dtype=np.float32)
        forest_predict(self._address, x, out, self.threads)
        return out


class LoadedBundle:
    """A validated bundle with one compiled predictor per family, ready to score."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        predictors: Mapping[str, CompiledForest],
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.version = manifest.version
        self.families: tuple[str, ...] = tuple(f for f in FAMILIES if f in predictors)
        self._predictors = dict(predictors)
        entries = [manifest.families[f] for f in self.families]
        # family x feature, for explanations
        self.importances = np.array([e.importances for e in entries], dtype=np.float64)
        self.center = np.array(manifest.center, dtype=np.float64)
        self.scale = np.array(manifest.scale, dtype=np.float64)

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Per-family attack probability: shape (rows, families), order ``self.families``."""
        out = np.zeros((len(x), len(self.families)), dtype=np.float32)
        if len(x) == 0:
            return out
        rows = np.ascontiguousarray(x, dtype=np.float32)
        for j, family in enumerate(self.families):
            out[:, j] = self._predictors[family].predict(rows)
        return out


def checked_library(
    model_file: Path,
    sha256: str,
    cache: Path,
    options: CompileOptions | None,
    *,
    where: str,
    fix: str,
) -> Path:
    """The compiled library of a treelite checkpoint whose sha256 a manifest gives: the
    checkpoint checked against it, compiled (once, cached), and a private copy of the
    library to load. ModelError naming ``where`` (and ``fix`` for a mismatch)."""
    try:
        data = model_file.read_bytes()
    except OSError as exc:
        raise ModelError(f"{where}: cannot read {model_file.name} ({exc})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError(f"{where}: {model_file.name} does not match the manifest's sha256 {fix}")
    # The bytes just checked are the ones compiled: no second read of the file. What is
    # loaded is a private copy of a library that matches its compile record.
    return verified_copy(compile_model(data, cache, options, name=model_file.stem))


def _check_features(where: str, what: str, got: int) -> None:
    if got != len(FEATURES):
        raise ModelError(
            f"{where}: the {what} takes {got} features, the schema has {len(FEATURES)}"
        )


def load_checked_model(
    model_file: Path,
    sha256: str,
    cache: Path,
    options: CompileOptions | None,
    threads: int,
    *,
    where: str,
    what: str,
    fix: str,
) -> tuple[Any, Path]:
    """:func:`checked_library` loaded as a tl2cgen Predictor, checked to take the schema's
    features. Returns the Predictor and the library; ModelError naming ``where``."""
    import tl2cgen

    lib = checked_library(model_file, sha256, cache, options, where=where, fix=fix)
    try:
        predictor = tl2cgen.Predictor(lib, nthread=max(1, threads))
    except Exception as exc:  # tl2cgen raises its own TL2cgenError and OSError
        raise ModelError(f"{where}: cannot load {lib} ({exc})") from exc
    _check_features(where, what, predictor.num_feature)
    return predictor, lib


def load_bundle(
    bundle_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    threads: int = 1,
    options: CompileOptions | None = None,
) -> LoadedBundle:
    """Validate, compile (once, cached) and load a bundle; ModelError if anything is off."""
    path = Path(bundle_dir) if bundle_dir else DEFAULT_BUNDLE_DIR
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    manifest = read_manifest(path)
    predictors: dict[str, CompiledForest] = {}
    for family, entry in manifest.families.items():
        where = f"{path}: family {family}"
        lib = checked_library(
            path / entry.model, entry.sha256, cache, options, where=where,
            fix="(a partly copied bundle?): copy the whole folder again",
        )  # fmt: skip
        try:
            forest = CompiledForest(lib, threads)
        except (OSError, AttributeError, ValueError) as exc:
            raise ModelError(f"{where}: cannot load {lib} ({exc})") from exc
        _check_features(where, "forest", forest.num_feature)
        if entry.probe_rows:
            got = forest.predict(np.array(entry.probe_rows, dtype=np.float32))
            worst = float(np.max(np.abs(got - np.array(entry.probe_proba))))
            if worst > PROBE_TOLERANCE:
                raise ModelError(
                    f"{path}: family {family}: the compiled forest differs from the trained one "
                    f"by {worst:.2e} on the probe rows (tolerance {PROBE_TOLERANCE}): retrain"
                )
        predictors[family] = forest
    log.info("loaded model bundle %s (%s) from %s", manifest.version, ", ".join(predictors), path)
    return LoadedBundle(path, manifest, predictors)
