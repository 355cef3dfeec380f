"""Forests to native code: scikit-learn -> treelite checkpoint -> tl2cgen shared library.

* :func:`forest_to_treelite` builds the treelite model of a fitted binary
  ``RandomForestClassifier`` with treelite's ModelBuilder, node by node. (treelite
  4.1.2's own sklearn importer, the version tl2cgen 1.0.0 embeds, calls
  ``np.array(copy=False)``, which NumPy 2 refuses.) Each tree's leaf holds the fraction of
  class 1 among its weighted training rows and the forest averages the trees, which is
  ``predict_proba[:, 1]``. sklearn stores thresholds as float64 and compares
  ``float32(x) <= threshold``; a float32 threshold rounded *down* to the nearest float32
  gives the same answer for every float32 input, so the compiled forest takes the same
  path as sklearn's and differs only by float32 summation (under 1e-6).
* :func:`compile_model` turns a checkpoint into a shared library with tl2cgen, in a child
  process (treelite logs to stdout, which ``mld detector analyze`` uses for its output; a child
  also bounds the time). Libraries are content-addressed: the file name carries a hash of
  the checkpoint, the compile settings and the tl2cgen version, so a library is built once
  and a new bundle only compiles the forests that changed. The checkpoint is read once and
  its bytes both hashed and compiled (the child reads them on stdin).
* A library is trusted only when it matches the record written beside it when it was
  compiled (``<lib>.sha256``: this user's, mode 0600); :func:`verified_copy` gives the
  loader a private copy of bytes that matched, so a library planted in or swapped into the cache is
  never loaded (it is compiled again instead, with a warning).

Run as ``python -m detector.compile MODEL.tl|- OUT.so OPTIONS_JSON``: the child's entry
point (``-``: the checkpoint's bytes on stdin).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import ModelError

__all__ = [
    "COMPILE_TIMEOUT_S",
    "CompileOptions",
    "compile_model",
    "forest_to_treelite",
    "library_path",
    "verified_copy",
    "verified_library_bytes",
]

log = logging.getLogger(__name__)

COMPILE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class CompileOptions:
    """tl2cgen settings; bench/detector_inference.py compares them."""

    # Compiler flags; -O2 compiled as fast as -O1 here and ran faster (see the bench).
    cflags: tuple[str, ...] = ("-O2",)
    # Translation units the trees are split into (compiled in parallel by the toolchain).
    parallel_comp: int = 8
    # Compare quantized feature indices instead of floats (tl2cgen's quantize=1). Off: with
    # it, tl2cgen 1.0.0 sent a value equal to a threshold the wrong way
    # (tests/detector/test_compile.py, adjacent float32 values).
    quantize: bool = False
    # Branch annotation file (tl2cgen.annotate_branch output) to mark likely branches.
    annotation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parallel_comp": self.parallel_comp, **self.extra}
        if self.quantize:
            out["quantize"] = 1
        if self.annotation:
            out["annotate_in"] = self.annotation
        return out


@dataclass(frozen=True)
class TreeArrays:
    """One fitted sklearn tree as arrays: children (-1 at a leaf), split feature, sklearn's
    float64 threshold, and the value each leaf outputs."""

    left: Any
    right: Any
    feature: Any
    threshold: Any
    leaf: Any


def float32_thresholds(threshold: Any) -> Any:
    """sklearn's float64 thresholds as float32, each rounded *down* where float32 rounding
    went up, so a float32 input goes left exactly when sklearn's comparison in float64
    does (``x <= t``)."""
    out = np.asarray(threshold).astype(np.float32)
    above = out.astype(np.float64) > threshold
    out[above] = np.nextafter(out[above], np.float32(-np.inf))
    return out


def trees_to_treelite(trees: list[TreeArrays], n_features: int, task_type: str) -> Any:
    """A treelite Model averaging ``trees`` (one output per row), built node by node with
    treelite's ModelBuilder: treelite 4.1's own sklearn importer fails on NumPy 2."""
    from treelite.model_builder import (  # imported late: the CLI starts without it
        Metadata,
        ModelBuilder,
        PostProcessorFunc,
        TreeAnnotation,
    )

    n_trees = len(trees)
    builder = ModelBuilder(
        threshold_type="float32",
        leaf_output_type="float32",
        metadata=Metadata(
            num_feature=n_features,
            task_type=task_type,
            average_tree_output=True,
            num_target=1,
            num_class=[1],
            leaf_vector_shape=(1, 1),
        ),
        tree_annotation=TreeAnnotation(
            num_tree=n_trees, target_id=[0] * n_trees, class_id=[0] * n_trees
        ),
        postprocessor=PostProcessorFunc(name="identity"),
        base_scores=[0.0],
    )
    for t in trees:
        left, right = np.asarray(t.left).tolist(), np.asarray(t.right).tolist()
        feature = np.asarray(t.feature).tolist()
        thr = float32_thresholds(t.threshold).tolist()
        leaf = np.asarray(t.leaf, dtype=np.float64).tolist()
        builder.start_tree()  # type: ignore[no-untyped-call]
        for node in range(len(left)):
            builder.start_node(node)
            if left[node] == -1:
                builder.leaf(leaf[node])
            else:
                builder.numerical_test(
                    feature[node], thr[node], True, "<=", left[node], right[node]
                )
            builder.end_node()  # type: ignore[no-untyped-call]
        builder.end_tree()  # type: ignore[no-untyped-call]
    return builder.commit()


def forest_to_treelite(forest: Any) -> Any:
    """The treelite Model of a fitted binary sklearn RandomForestClassifier: the mean of
    the trees' positive-class fractions, as ``predict_proba``."""
    if list(getattr(forest, "classes_", [])) != [0, 1]:
        raise ModelError(f"expected a binary forest with classes [0, 1], got {forest.classes_}")
    trees = []
    for estimator in forest.estimators_:
        tree = estimator.tree_
        value = tree.value[:, 0, :]
        totals = value.sum(axis=1)
        positive = np.divide(value[:, 1], totals, out=np.zeros(len(totals)), where=totals > 0)
        trees.append(TreeArrays(tree.children_left, tree.children_right, tree.feature,
                                tree.threshold, positive))  # fmt: skip
    return trees_to_treelite(trees, int(forest.n_features_in_), "kBinaryClf")


def _versions() -> str:
    """tl2cgen's version as ``tl2cgen.__version__`` gives it (its VERSION file), read
    without importing tl2cgen, which imports treelite and SciPy: loading a cached library
    needs neither."""
    import importlib.util

    spec = importlib.util.find_spec("tl2cgen")
    if spec is None or spec.origin is None:
        raise ModelError("tl2cgen is not installed (run `make install`)")
    version = (Path(spec.origin).parent / "VERSION").read_text(encoding="utf-8").strip()
    return f"tl2cgen {version}"


def _library_path(data: bytes, stem: str, cache_dir: Path, options: CompileOptions) -> Path:
    digest = hashlib.sha256()
    digest.update(data)
    digest.update(json.dumps(asdict(options), sort_keys=True).encode())
    if options.annotation:
        digest.update(Path(options.annotation).read_bytes())
    digest.update(_versions().encode())
    return cache_dir / f"{stem}-{digest.hexdigest()[:16]}.so"


def library_path(model_file: Path, cache_dir: Path, options: CompileOptions) -> Path:
    """Where the compiled library of ``model_file`` with ``options`` lives in the cache."""
    return _library_path(model_file.read_bytes(), model_file.stem, cache_dir, options)


def _record_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _write_record(lib: Path, data: bytes) -> None:
    """Record the library's sha256 beside it: a file of this user's, mode 0600."""
    record = json.dumps({"library": lib.name, "sha256": hashlib.sha256(data).hexdigest()})
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}.sha256.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(record)
    os.replace(tmp, _record_path(lib))


def verified_library_bytes(lib: Path) -> bytes | None:
    """The bytes of a cached library when they match its record, else None.

    The record must be a regular file of this process's user that nobody else may write,
    and name this library: a library planted in the cache (or a record planted beside it
    by another user) is never taken for a compiled forest.
    """
    record = _record_path(lib)
    try:
        st = os.lstat(record)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        fields = json.loads(record.read_text(encoding="utf-8"))
        fd = os.open(lib, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict) or fields.get("library") != lib.name:
        return None
    return data if hashlib.sha256(data).hexdigest() == fields.get("sha256") else None


def compile_model(
    model: Path | bytes,
    cache_dir: Path,
    options: CompileOptions | None = None,
    timeout_s: float = COMPILE_TIMEOUT_S,
    *,
    name: str | None = None,
) -> Path:
    """The shared library of a treelite checkpoint (a file, or its bytes already read and
    checked by the caller), compiled unless a library that matches its record is cached.

    The checkpoint is read once: the cache key is hashed from, and the child compiles,
    the same bytes, so a checkpoint changed on disk meanwhile cannot be compiled under
    the key of the one that was checked. ``name`` is the library's name stem (default:
    the file's).
    """
    options = options or CompileOptions()
    if isinstance(model, Path):
        data, stem, shown = model.read_bytes(), name or model.stem, str(model)
    else:
        data, stem, shown = model, name or "model", f"{name or 'model'} (checkpoint bytes)"
    out = _library_path(data, stem, cache_dir, options)
    if out.exists():
        if verified_library_bytes(out) is not None:
            return out
        log.warning(
            "cached library %s does not match its record (changed, or not compiled here): "
            "compiling it again",
            out,
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.so")
    cmd = [sys.executable, "-m", "detector.compile", "-", str(tmp), json.dumps(asdict(options))]
    log.info("compiling %s -> %s", stem, out)
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"compiling {shown} took over {timeout_s:.0f} s: the forest is too large; "
            "lower detector.train.n_trees or max_depth and retrain"
        ) from None
    if done.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        text = (done.stderr or done.stdout).decode("utf-8", "replace")
        tail = text.strip().splitlines()[-5:]
        raise ModelError(
            f"compiling {shown} failed (exit {done.returncode}): {' | '.join(tail)}. "
            "Likely causes: no C compiler (apt install gcc), or a checkpoint this treelite "
            "cannot read. Run `make install`."
        )
    _write_record(out, tmp.read_bytes())
    os.replace(tmp, out)
    return out


_private_dir: Path | None = None


def verified_copy(lib: Path) -> Path:
    """A private copy of a cached library, made of bytes that match its record, for the
    process to load: read once and checked, so the file in the cache cannot change
    between the check and the load. The copies live in one folder of this process (mode
    0700, removed at exit). ModelError when the library does not match its record."""
    global _private_dir
    data = verified_library_bytes(lib)
    if data is None:
        raise ModelError(
            f"{lib} does not match its record (changed after it was compiled?): remove it "
            "and its .sha256 file from the model cache, and load again to recompile"
        )
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="mld-models-"))
        atexit.register(shutil.rmtree, _private_dir, True)
    copy = _private_dir / lib.name
    if not copy.exists():
        tmp = _private_dir / f".{lib.name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o500)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, copy)
    return copy


def _child(model_file: str, out: str, options_json: str) -> None:
    import tl2cgen
    import treelite

    opts = CompileOptions(**json.loads(options_json))
    if model_file == "-":  # the checkpoint's bytes on stdin, as the parent checked them
        model = treelite.Model.deserialize_bytes(sys.stdin.buffer.read())
    else:
        model = treelite.Model.deserialize(model_file)
    tl2cgen.export_lib(
        model,
        toolchain="gcc",
        libpath=out,
        params=opts.params(),
        options=list(opts.cflags),
        nthread=os.cpu_count() or 1,
    )


if __name__ == "__main__":
    _child(*sys.argv[1:4])
