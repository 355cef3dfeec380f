"""Per-flow inference time of the compiled family forests vs scikit-learn, and the forest
size and compile options to deploy, measured on real labelled flows in the same run.

Data: the flows of a real lab capture (--lab, default build/lab-data/run-lab-dev: one
``mld lab dataset`` run, capture.pcap + labels.csv) and of ../shared/data (--shared),
extracted with detector.dataset (the offline analysis path, so the features are the live
ones) and split *by capture* exactly as ``detector.dataset.discover`` marks them for
``mld detector train``: the shared attack captures not in SHARED_TRAIN and the odd-numbered nDPI
captures are held out, and so are the lab folders named by --lab-test (by default
LAB_TEST_DEFAULT when --lab is a dataset of several runs; a single run has none held out)
and every capture of --held-out-lab DIR (a second lab capture: same recipes, other seeds).
F1 is reported on all held-out rows and separately on the lab and the shared ones.
Training rows are capped per label per capture as detector.train does. Each family is
trained one-against-the-rest with the settings of config.detector.train (class weights,
min_samples_leaf, max_features, seed), varying only the tree count and depth.

Three parts, per family (default scan and ddos):

1. Curve: a forest for every (n_trees, max_depth) of the grid; held-out F1 at the alert
   threshold (and average precision), the mean over --seeds forests of that size (seeds
   train.seed, +1, ...; the first is the one compiled and timed); compile time
   (``compile_model`` into a temp cache: the child process, with Python start-up), and
   compiled per-flow time at batches 1 and 1024 with the default CompileOptions.
   ``F1/us`` is F1 per microsecond per flow at 1024.
2. Compile options at the deployed size (config.detector.train, or --deploy): -O2, -O3 and
   "-O3 -march=native", each with quantize on and off, each without and with branch
   annotation (tl2cgen.annotate_branch on the training rows). Ratios are against the
   default CompileOptions, measured in the same run.
3. Compiled vs sklearn on the deployed forest with the default CompileOptions, at batches
   1, 64, 1024 and 65536 of real flows: ``Predictor(nthread=1).predict(DMatrix(x))``
   (the DMatrix is built inside the timed call, as LoadedBundle.predict does), against
   ``predict_proba`` with n_jobs=1 (sklearn's default n_jobs=None is the same: one job)
   and with n_jobs=-1 (both cores, how detector.train fits). ``predict_only`` is the
   compiled call with the DMatrix built beforehand, for where the time goes.

Every compiled forest is checked against sklearn's predict_proba on all timing rows; a
difference above 1e-5 stops the run. Timings: each measurement repeats the call for at
least --min-time seconds (median per call over --repeats rounds, contenders alternating).

    .venv/bin/python bench/detector_inference.py                       # ~6 minutes
    .venv/bin/python bench/detector_inference.py --held-out-lab DIR  # + a second lab capture
    .venv/bin/python bench/detector_inference.py --trees 16,32 --depths 8,12 --families scan
    .venv/bin/python bench/detector_inference.py --quick --no-lab      # smoke run

Last line: ``us_per_flow_1024=N sklearn_ratio_1024=R sklearn_ratio_1=R`` (the slowest
family's compiled time per flow at batch 1024; ratios are sklearn n_jobs=1 time / compiled
time, the smallest over families), then more keys for the other batches, compile time,
held-out F1 and the deployed size.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for bench.common
from bench.common import shared_data
from config import load_config
from detector.bundle import DIRECT_MAX_ROWS, RowPredictor
from detector.compile import CompileOptions, compile_model, forest_to_treelite
from detector.config import TrainConfig
from detector.dataset import LAB_TEST_DEFAULT, Capture, discover, extract
from detector.families import FAMILIES

REPO = Path(__file__).resolve().parent.parent

DEFAULT_LAB = REPO / "build" / "lab-data" / "run-lab-dev"
DEFAULT_SHARED = shared_data()
BATCHES = (1, 64, 1024, 65536)
TOLERANCE = 1e-5
CFLAGS = {"O2": ("-O2",), "O3": ("-O3",), "O3-native": ("-O3", "-march=native")}

F32 = npt.NDArray[np.float32]


# ---- data ----------------------------------------------------------------------------------


@dataclass
class Data:
    x_train: F32
    fam_train: npt.NDArray[np.object_]
    x_test: F32
    fam_test: npt.NDArray[np.object_]
    group_test: npt.NDArray[np.object_]  # "lab" or "shared": where a held-out row is from
    pool: F32  # timing rows: real flows, train and held out, shuffled, max(BATCHES) of them
    train_names: list[str]
    test_names: list[str]


def _cap_rows(label: npt.NDArray[np.object_], cap: int, rng: np.random.Generator) -> Any:
    """Row indices with at most ``cap`` rows per label (seeded sample), as detector.train."""
    keep = []
    for value in sorted(set(label.tolist())):
        idx = np.flatnonzero(label == value)
        if len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.intp)


def load_data(captures: Sequence[Capture], train: TrainConfig, rows: int) -> Data:
    cfg = load_config()
    rng = np.random.default_rng(train.seed)
    xs: dict[bool, list[F32]] = {False: [], True: []}
    fams: dict[bool, list[npt.NDArray[np.object_]]] = {False: [], True: []}
    names: dict[bool, list[str]] = {False: [], True: []}
    groups: list[npt.NDArray[np.object_]] = []
    for cap in captures:
        flows = extract(cap, cfg.sniffer)
        if len(flows.x) == 0:
            continue
        idx = (
            np.arange(len(flows.x))
            if cap.held_out
            else _cap_rows(flows.label, train.max_flows_per_label, rng)
        )
        xs[cap.held_out].append(flows.x[idx])
        fams[cap.held_out].append(flows.family[idx])
        names[cap.held_out].append(cap.name)
        if cap.held_out:
            groups.append(np.full(len(idx), "lab" if cap.source == "lab" else "shared", object))
    if not xs[False] or not xs[True]:
        raise SystemExit(
            "detector_inference: need training and held-out captures (split by capture): "
            "pass --shared DIR, or a lab dataset of several runs with --lab-test NAME"
        )
    x_train, x_test = np.concatenate(xs[False]), np.concatenate(xs[True])
    every = np.concatenate([x_train, x_test])
    pick = rng.choice(len(every), rows, replace=len(every) < rows)
    return Data(
        x_train=x_train,
        fam_train=np.concatenate(fams[False]),
        x_test=x_test,
        fam_test=np.concatenate(fams[True]),
        group_test=np.concatenate(groups),
        pool=np.ascontiguousarray(every[pick], dtype=np.float32),
        train_names=names[False],
        test_names=names[True],
    )


def _lab_dir(path: Path) -> list[str]:
    """Run folders of a lab dataset (or [] when ``path`` is one run)."""
    if (path / "labels.csv").exists():
        return []
    return sorted(p.parent.name for p in path.glob("*/labels.csv"))


# ---- forests -------------------------------------------------------------------------------


def fit_forest(
    x: F32, y: npt.NDArray[np.bool_], n_trees: int, depth: int, train: TrainConfig, jobs: int
) -> Any:
    """A forest with detector.train's settings but ``n_trees`` and ``depth``."""
    from sklearn.ensemble import RandomForestClassifier

    mf = train.max_features
    return RandomForestClassifier(
        n_estimators=n_trees,
        max_depth=depth,
        min_samples_leaf=train.min_samples_leaf,
        max_features=mf if mf in ("sqrt", "log2") else float(mf),
        class_weight="balanced",
        n_jobs=jobs,
        random_state=train.seed,
    ).fit(x, y.astype(np.int64))


def _f1(y: npt.NDArray[np.bool_], pred: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    tp, fp, fn = int((y & pred).sum()), int((~y & pred).sum()), int((y & ~pred).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def held_out_metrics(forest: Any, data: Data, family: str, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 at ``threshold`` and average precision on all held-out rows,
    and F1 on each group's held-out rows (``f1_lab``, ``f1_shared``; nan without positives)."""
    from sklearn.metrics import average_precision_score

    y = data.fam_test == family
    p = forest.predict_proba(data.x_test)[:, 1]
    pred = p >= threshold
    precision, recall, f1 = _f1(y, pred)
    ap = float(average_precision_score(y, p)) if y.any() else math.nan
    out = {"f1": f1, "precision": precision, "recall": recall, "ap": ap}
    for group in ("lab", "shared"):
        g = data.group_test == group
        out[f"f1_{group}"] = _f1(y[g], pred[g])[2] if (y & g).any() else math.nan
    return out


def seed_metrics(
    forest: Any,
    data: Data,
    family: str,
    size: tuple[int, int],
    train: TrainConfig,
    jobs: int,
    threshold: float,
    seeds: int,
) -> dict[str, float]:
    """held_out_metrics averaged over ``forest`` (seed train.seed) and ``seeds - 1`` more
    forests of the same size with the next seeds; ``f1_min`` is the worst seed's F1."""
    runs = [held_out_metrics(forest, data, family, threshold)]
    y = data.fam_train == family
    for k in range(1, seeds):
        other = fit_forest(data.x_train, y, *size, dataclasses.replace(train, seed=train.seed + k),
                           jobs)  # fmt: skip
        runs.append(held_out_metrics(other, data, family, threshold))
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs if not math.isnan(r[key])]
        out[key] = statistics.fmean(values) if values else math.nan
    out["f1_min"] = min(r["f1"] for r in runs)
    return out


def forest_shape(forest: Any) -> tuple[int, int]:
    """Total nodes and the deepest tree actually grown."""
    trees = [e.tree_ for e in forest.estimators_]
    return sum(int(t.node_count) for t in trees), max(int(t.max_depth) for t in trees)


class Compiled:
    """A forest compiled with ``compile_model`` and loaded with one predictor thread."""

    def __init__(
        self, model: Any, name: str, workdir: Path, options: CompileOptions, cache: str = "cache"
    ) -> None:
        import tl2cgen

        checkpoint = workdir / f"{name}.tl"
        if not checkpoint.exists():
            model.serialize(str(checkpoint))
        started = time.perf_counter()
        self.lib = compile_model(checkpoint, workdir / cache, options)
        self.compile_s = time.perf_counter() - started
        self.predictor = tl2cgen.Predictor(str(self.lib), nthread=1)
        self.rows = RowPredictor(self.lib)

    def predict(self, x: F32) -> npt.NDArray[np.float32]:
        """As LoadedBundle.predict calls a forest: row by row through the library's
        ``predict`` up to DIRECT_MAX_ROWS rows, tl2cgen's Predictor above."""
        import tl2cgen

        if len(x) <= DIRECT_MAX_ROWS:
            one = np.zeros(len(x), dtype=np.float32)
            self.rows(np.array(x, dtype=np.float32, order="C"), one)  # it may write into it
            return one
        out: npt.NDArray[np.float32] = self.predictor.predict(tl2cgen.DMatrix(x, dtype="float32"))
        return out.reshape(-1)


def check_equal(compiled: Compiled, forest: Any, rows: F32, what: str) -> float:
    """Largest |compiled - sklearn| on ``rows``; stops the run above TOLERANCE."""
    want = forest.predict_proba(rows)[:, 1]
    got = compiled.predict(rows)
    worst = float(np.max(np.abs(got.astype(np.float64) - want)))
    if not worst <= TOLERANCE:
        bad = int(np.argmax(np.abs(got - want)))
        raise SystemExit(
            f"detector_inference: FAIL: {what}: compiled forest differs from sklearn "
            f"predict_proba by {worst:.3e} > {TOLERANCE} (row {bad}: {got[bad]} vs "
            f"{want[bad]}); detector.compile.forest_to_treelite or the compile options "
            "change the model"
        )
    return worst


# ---- timing --------------------------------------------------------------------------------


def batches_of(pool: F32, size: int, count: int = 8) -> list[F32]:
    """``count`` distinct contiguous batches of ``size`` rows (fewer when the pool is short)."""
    n = max(1, min(count, len(pool) // size))
    return [np.ascontiguousarray(pool[i * size : (i + 1) * size]) for i in range(n)]


def per_call_s(fn: Callable[[F32], object], batches: list[F32], min_s: float) -> float:
    """Seconds per call of ``fn``, cycling through ``batches`` for at least ``min_s``."""
    fn(batches[0])
    calls = 0
    started = time.perf_counter()
    while True:
        fn(batches[calls % len(batches)])
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_s and calls >= 3:
            return elapsed / calls


def time_contenders(
    contenders: dict[str, Callable[[F32], object]],
    pool: F32,
    sizes: Sequence[int],
    repeats: int,
    min_s: float,
) -> dict[tuple[str, int], float]:
    """Median microseconds per flow of every contender at every batch size, alternating."""
    prepared = {size: batches_of(pool, size) for size in sizes}
    got: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for size in sizes:
            for name, fn in contenders.items():
                s = per_call_s(fn, prepared[size], min_s)
                got.setdefault((name, size), []).append(s / size * 1e6)
    return {k: statistics.median(v) for k, v in got.items()}


# ---- the three parts -----------------------------------------------------------------------


def run_curve(
    data: Data,
    family: str,
    grid: Sequence[tuple[int, int]],
    train: TrainConfig,
    jobs: int,
    threshold: float,
    workdir: Path,
    args: argparse.Namespace,
) -> list[dict[str, float]]:
    y = data.fam_train == family
    rows = []
    for n_trees, depth in grid:
        started = time.perf_counter()
        forest = fit_forest(data.x_train, y, n_trees, depth, train, jobs)
        fit_s = time.perf_counter() - started
        forest.n_jobs = 1
        metrics = seed_metrics(
            forest, data, family, (n_trees, depth), train, jobs, threshold, args.seeds
        )
        nodes, reached = forest_shape(forest)
        compiled = Compiled(
            forest_to_treelite(forest), f"{family}-{n_trees}-{depth}", workdir, CompileOptions()
        )
        check_equal(compiled, forest, data.pool, f"{family} {n_trees} trees depth {depth}")
        us = time_contenders(
            {"c": compiled.predict}, data.pool, (1, 1024), args.repeats, args.min_time
        )
        row = {
            "n_trees": n_trees,
            "max_depth": depth,
            "nodes": nodes,
            "depth": reached,
            "fit_s": fit_s,
            "compile_s": compiled.compile_s,
            **metrics,
            "us_1": us[("c", 1)],
            "us_1024": us[("c", 1024)],
        }
        row["f1_per_us"] = row["f1"] / row["us_1024"]
        rows.append(row)
        print(
            f"  {family:5} {n_trees:4} trees depth {depth:3}: {nodes:6} nodes (deepest "
            f"{reached:2}), fit {fit_s:5.1f} s, compile {compiled.compile_s:4.1f} s, "
            f"F1 {row['f1']:.3f} (min {row['f1_min']:.3f}; lab {row['f1_lab']:.3f}, shared "
            f"{row['f1_shared']:.3f}) "
            f"AP {row['ap']:.3f}, {row['us_1024']:.3f} us/flow @1024, "
            f"{row['us_1']:.1f} us @1, F1/us {row['f1_per_us']:.2f}",
            flush=True,
        )
    return rows


def print_curve(family: str, rows: list[dict[str, float]], seeds: int) -> None:
    print(
        f"\ncurve {family} (held-out metrics at the alert threshold, mean of {seeds} seeds; "
        "time, nodes and compile of the first seed's forest, default CompileOptions)"
    )
    print(
        "| trees | depth | nodes | deepest | fit s | compile s | precision | recall | F1 "
        "| F1 min | F1 lab | F1 shared | AP | us/flow @1024 | us @1 | F1/us |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n_trees']:.0f} | {r['max_depth']:.0f} | {r['nodes']:.0f} | "
            f"{r['depth']:.0f} | {r['fit_s']:.1f} | {r['compile_s']:.1f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['f1_min']:.3f} | "
            f"{r['f1_lab']:.3f} | "
            f"{r['f1_shared']:.3f} | {r['ap']:.3f} | "
            f"{r['us_1024']:.3f} | {r['us_1']:.1f} | {r['f1_per_us']:.2f} |"
        )
    best = max(r["f1"] for r in rows)
    near = [r for r in rows if r["f1"] >= best - 0.01]
    knee = min(near, key=lambda r: (r["nodes"], r["us_1024"]))
    print(
        f"{family}: best F1 {best:.3f}; fewest nodes within 0.01 of it: {knee['n_trees']:.0f} "
        f"trees, depth {knee['max_depth']:.0f} ({knee['us_1024']:.3f} us/flow, F1 "
        f"{knee['f1']:.3f})"
    )


def option_variants(quick: bool) -> dict[str, tuple[tuple[str, ...], bool, bool]]:
    """name -> (cflags, quantize, annotate)."""
    out = {}
    for cname, flags in CFLAGS.items():
        for quantize in (True, False):
            for annotate in (False, True):
                name = cname + ("+quantize" if quantize else "") + ("+annotate" if annotate else "")
                out[name] = (flags, quantize, annotate)
    if quick:
        out = {k: v for k, v in out.items() if k in ("O2+quantize", "O2", "O2+annotate")}
    return out


def run_options(
    forest: Any, model: Any, data: Data, family: str, workdir: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    import tl2cgen

    default = CompileOptions()
    annotation = workdir / f"{family}-deploy-annotation.json"
    tl2cgen.annotate_branch(
        model, tl2cgen.DMatrix(data.x_train, dtype="float32"), annotation, nthread=1
    )
    compiled: dict[str, Compiled] = {}
    meta: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
    for name, (flags, quantize, annotate) in option_variants(args.quick).items():
        opts = dataclasses.replace(
            default,
            cflags=flags,
            quantize=quantize,
            annotation=str(annotation) if annotate else None,
        )
        compiled[name] = Compiled(model, f"{family}-deploy", workdir, opts)
        check_equal(compiled[name], forest, data.pool, f"{family} options {name}")
        meta[name] = (flags, quantize, annotate)
    base = next(
        (
            n
            for n, (f, q, a) in meta.items()
            if f == default.cflags and q == default.quantize and not a
        ),
        next(iter(meta)),
    )
    sizes = (1, 1024, 65536)
    us = time_contenders(
        {n: c.predict for n, c in compiled.items()}, data.pool, sizes, args.repeats, args.min_time
    )
    rows = []
    print(f"\ncompile options {family} (deployed size; speed-up = default us / variant us)")
    print(
        "| variant | compile s | us @1 | us/flow @1024 | us/flow @65536 | speed-up @1024 "
        "| speed-up @65536 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c in compiled.items():
        row = {
            "variant": name,
            "compile_s": c.compile_s,
            **{f"us_{s}": us[(name, s)] for s in sizes},
            "speedup_1024": us[(base, 1024)] / us[(name, 1024)],
            "speedup_65536": us[(base, 65536)] / us[(name, 65536)],
        }
        rows.append(row)
        mark = " (default)" if name == base else ""
        print(
            f"| {name}{mark} | {c.compile_s:.1f} | {row['us_1']:.1f} | {row['us_1024']:.3f} | "
            f"{row['us_65536']:.3f} | {row['speedup_1024']:.2f} | "
            f"{row['speedup_65536']:.2f} |"
        )
    return rows


def run_versus(
    forest: Any, model: Any, data: Data, family: str, workdir: Path, args: argparse.Namespace
) -> dict[tuple[str, int], float]:
    import tl2cgen

    # A cache of its own: the options part compiled the same library already.
    compiled = Compiled(model, f"{family}-deploy", workdir, CompileOptions(), "cache-versus")
    worst = check_equal(compiled, forest, data.pool, f"{family} deployed")
    serial = copy.copy(forest)
    serial.n_jobs = 1
    parallel = copy.copy(forest)
    parallel.n_jobs = -1
    dmats: dict[int, Any] = {}

    def predict_only(x: F32) -> object:
        key = id(x)
        if key not in dmats:
            dmats[key] = tl2cgen.DMatrix(x, dtype="float32")
        return compiled.predictor.predict(dmats[key])

    contenders: dict[str, Callable[[F32], object]] = {
        "compiled": compiled.predict,
        "predict_only": predict_only,
        "sklearn": lambda x: serial.predict_proba(x),
        "sklearn_all_cores": lambda x: parallel.predict_proba(x),
    }
    us = time_contenders(contenders, data.pool, BATCHES, args.repeats, args.min_time)
    print(f"\ncompiled vs sklearn, {family} (max |diff| {worst:.1e} on {len(data.pool)} rows)")
    print(
        "| batch | compiled us/flow | rows/s | predict only us/flow | sklearn n_jobs=1 "
        "us/flow | rows/s | ratio | sklearn n_jobs=-1 us/flow | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in BATCHES:
        c, p = us[("compiled", b)], us[("predict_only", b)]
        s, a = us[("sklearn", b)], us[("sklearn_all_cores", b)]
        print(
            f"| {b} | {c:.3f} | {1e6 / c:,.0f} | {p:.3f} | {s:.2f} | {1e6 / s:,.0f} | "
            f"{s / c:.1f} | {a:.2f} | {a / c:.1f} |"
        )
    us[("compile_s", 0)] = compiled.compile_s
    return us


# ---- main ----------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  .venv/bin/python bench/detector_inference.py\n"
        "  .venv/bin/python bench/detector_inference.py --lab build/lab-data/default "
        "--families scan,ddos,bruteforce\n"
        "  .venv/bin/python bench/detector_inference.py --trees 16,32 --depths 10 --repeats 5",
    )
    parser.add_argument(
        "--lab",
        type=Path,
        default=DEFAULT_LAB,
        help="lab capture folder or dataset (default %(default)s)",
    )
    parser.add_argument("--no-lab", action="store_true", help="shared captures only")
    parser.add_argument(
        "--lab-test",
        action="append",
        default=None,
        metavar="NAME",
        help="held-out run folder of a lab dataset (repeatable)",
    )
    parser.add_argument(
        "--held-out-lab",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a second lab capture (or dataset), all held out (repeatable)",
    )
    parser.add_argument(
        "--shared", type=Path, default=DEFAULT_SHARED, help="../shared/data (labels.csv, pcaps/)"
    )
    parser.add_argument("--no-shared", action="store_true", help="lab captures only")
    parser.add_argument("--families", default="scan,ddos", help="comma-separated families")
    parser.add_argument("--trees", default="8,16,32,64,128", help="tree counts of the grid")
    parser.add_argument("--depths", default="4,6,8,10,12,16", help="max depths of the grid")
    parser.add_argument(
        "--deploy",
        default="",
        metavar="TREES,DEPTH",
        help="deployed size (default config detector.train)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="forests per size whose held-out F1 is averaged"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (median)")
    parser.add_argument(
        "--min-time", type=float, default=0.2, help="seconds each timing measurement lasts at least"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny grid, 1 round")
    args = parser.parse_args(argv)

    cfg = load_config()
    train = cfg.detector.train
    jobs = train.jobs or os.cpu_count() or 1
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    grid = [(t, d) for t in _ints(args.trees) for d in _ints(args.depths)]
    sizes = {f: train.size_of(f) for f in families}  # the deployed sizes (detector.train)
    if args.deploy:
        n, d = _ints(args.deploy)
        sizes = {f: (n, d) for f in families}
    if args.quick:
        grid, sizes = [(4, 4), (8, 6)], {f: (8, 6) for f in families}
        args.repeats, args.min_time, args.seeds = 1, 0.02, 1

    lab: Path | None = None if args.no_lab else args.lab
    if lab is not None and not (lab / "labels.csv").exists() and not _lab_dir(lab):
        raise SystemExit(
            f"detector_inference: no lab capture in {lab} (capture.pcap + labels.csv): record "
            "one with `mld lab dataset` (make lab-dataset), pass --lab DIR, or --no-lab to "
            "use the shared captures only"
        )
    shared: Path | None = None if args.no_shared else args.shared
    if shared is not None and not (shared / "labels.csv").exists():
        raise SystemExit(
            f"detector_inference: {shared} has no labels.csv: pass --shared DIR "
            "(../shared/data) or --no-shared"
        )
    lab_test: list[str] = args.lab_test or []
    if lab is not None and args.lab_test is None:
        lab_test = [n for n in LAB_TEST_DEFAULT if n in _lab_dir(lab)]

    load0 = os.getloadavg()
    started = time.perf_counter()
    captures = discover(lab, shared, lab_test)
    for extra_lab in args.held_out_lab:
        more = discover(extra_lab, None, [n for n in LAB_TEST_DEFAULT if n in _lab_dir(extra_lab)])
        captures += [
            dataclasses.replace(c, name=f"{c.name} (held out)", held_out=True) for c in more
        ]
    data = load_data(captures, train, max(BATCHES))
    print(
        f"data: {len(data.train_names)} training captures, {len(data.x_train)} rows; "
        f"{len(data.test_names)} held-out captures, {len(data.x_test)} rows (split by "
        f"capture); read in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    for fam in families:
        print(
            f"  {fam}: {int((data.fam_train == fam).sum())} training positives, "
            f"{int((data.fam_test == fam).sum())} held-out positives"
        )
    print(
        f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
        f"{os.cpu_count()} CPUs; fit with n_jobs={jobs}; deployed sizes (trees, depth) "
        f"{sizes}; default {CompileOptions()}",
        flush=True,
    )

    threshold = cfg.detector.thresholds.alert
    results: dict[str, dict[tuple[str, int], float]] = {}
    f1: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mld-bench-detector-") as tmp:
        workdir = Path(tmp)
        for family in families:
            print(f"\n== {family}: curve over {len(grid)} sizes", flush=True)
            rows = run_curve(data, family, grid, train, jobs, threshold, workdir, args)
            print_curve(family, rows, args.seeds)
            deploy = sizes[family]
            forest = fit_forest(data.x_train, data.fam_train == family, *deploy, train, jobs)
            forest.n_jobs = 1
            f1[family] = seed_metrics(
                forest, data, family, deploy, train, jobs, threshold, args.seeds
            )["f1"]
            model = forest_to_treelite(forest)
            nodes, reached = forest_shape(forest)
            print(
                f"\n== {family}: deployed size {deploy[0]} trees, depth {deploy[1]}: {nodes} "
                f"nodes (deepest {reached}), held-out F1 {f1[family]:.3f}",
                flush=True,
            )
            run_options(forest, model, data, family, workdir, args)
            results[family] = run_versus(forest, model, data, family, workdir, args)
    load1 = os.getloadavg()
    total = time.perf_counter() - started
    print(
        f"\nload average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; total {total:.0f} s"
    )

    def worst_us(b: int) -> float:
        return max(r[("compiled", b)] for r in results.values())

    def min_ratio(b: int, peer: str = "sklearn") -> float:
        return min(r[(peer, b)] / r[("compiled", b)] for r in results.values())

    extra = " ".join(
        [f"us_per_flow_{b}={worst_us(b):.3f}" for b in BATCHES if b != 1024]
        + [f"sklearn_ratio_{b}={min_ratio(b):.1f}" for b in BATCHES if b not in (1, 1024)]
        + [f"sklearn_all_cores_ratio_{b}={min_ratio(b, 'sklearn_all_cores'):.1f}" for b in BATCHES]
        + [f"compile_s={max(r[('compile_s', 0)] for r in results.values()):.1f}"]
        + [f"f1_{fam}={v:.3f}" for fam, v in f1.items()]
        + [f"us_1024_{fam}={r[('compiled', 1024)]:.3f}" for fam, r in results.items()]
        + [f"size_{fam}={n}x{d}" for fam, (n, d) in sizes.items()]
        + [f"load1={load1[0]:.2f}"]
    )
    print(
        f"us_per_flow_1024={worst_us(1024):.3f} sklearn_ratio_1024={min_ratio(1024):.1f} "
        f"sklearn_ratio_1={min_ratio(1):.1f} {extra}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
