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
  and a new bundle only compiles the forests that changed.

Run as ``python -m detector.compile MODEL.tl OUT.so OPTIONS_JSON``: the child's entry point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
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
    import tl2cgen

    return f"tl2cgen {tl2cgen.__version__}"


def library_path(model_file: Path, cache_dir: Path, options: CompileOptions) -> Path:
    """Where the compiled library of ``model_file`` with ``options`` lives in the cache."""
    digest = hashlib.sha256()
    digest.update(model_file.read_bytes())
    digest.update(json.dumps(asdict(options), sort_keys=True).encode())
    if options.annotation:
        digest.update(Path(options.annotation).read_bytes())
    digest.update(_versions().encode())
    return cache_dir / f"{model_file.stem}-{digest.hexdigest()[:16]}.so"


def compile_model(
    model_file: Path,
    cache_dir: Path,
    options: CompileOptions | None = None,
    timeout_s: float = COMPILE_TIMEOUT_S,
) -> Path:
    """The shared library of a treelite checkpoint, compiled unless already in the cache."""
    options = options or CompileOptions()
    out = library_path(model_file, cache_dir, options)
    if out.exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.so")
    cmd = [
        sys.executable,
        "-m",
        "detector.compile",
        str(model_file),
        str(tmp),
        json.dumps(asdict(options)),
    ]
    log.info("compiling %s -> %s", model_file.name, out)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"compiling {model_file} took over {timeout_s:.0f} s: the forest is too large; "
            "lower detector.train.n_trees or max_depth and retrain"
        ) from None
    if done.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ModelError(
            f"compiling {model_file} failed (exit {done.returncode}): {' | '.join(tail)}. "
            "Likely causes: no C compiler (apt install gcc), or a checkpoint this treelite "
            "cannot read. Run `make install`."
        )
    os.replace(tmp, out)
    return out


def _child(model_file: str, out: str, options_json: str) -> None:
    import tl2cgen
    import treelite

    opts = CompileOptions(**json.loads(options_json))
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
