"""Training: the window -> an isolation forest -> a compiled, checked model -> swap or refuse.

One :func:`retrain`::

    read_window      the newest flows of the event store (anomaly/window.py); fewer than
                     anomaly.min_flows: skipped
    build_candidate  IsolationForest (seeded) on the fitting rows, treelite checkpoint,
                     written to versions/<version>, compiled and loaded (probe rows
                     checked against scikit-learn); a failure here refuses it
    judge            the share of held-back window flows each model scores at or above
                     anomaly.alert_threshold: the new model is refused when its share
                     exceeds the running model's by more than anomaly.max_worse plus
                     two standard errors of its share on that many flows
    publish          the ``current`` pointer names the new version (detectors swap to it)

Every decision (``swap``, ``refuse``, ``skip``) is logged with its reason and appended to
``history.json`` in the model folder (``mld anomaly status``); ``mld anomaly run`` also
reports it to the control plane (``mld status``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anomaly.isolation import fit_isolation_forest, isolation_to_treelite
from anomaly.versions import ModelDir
from anomaly.window import Window, read_window
from base.errors import ModelError
from detector.anomaly_model import LoadedAnomalyModel, load_model, write_model
from detector.config import AnomalyConfig

__all__ = ["Decision", "alert_rate", "build_candidate", "judge", "retrain", "train_on"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
PROBE_ROWS = 64


@dataclass
class Decision:
    """What one training did, and why."""

    action: str  # swap, refuse or skip
    reason: str
    ts: float = field(default_factory=time.time)
    version: str = ""  # the trained model's version ('' when none was built)
    serving: str = ""  # the version serving after the decision
    previous: str = ""  # the version serving before it
    window: dict[str, object] = field(default_factory=dict)
    holdout_rate_new: float | None = None
    holdout_rate_running: float | None = None
    read_s: float = 0.0
    fit_s: float = 0.0
    compile_s: float = 0.0
    total_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.ts))
        what = f"{self.action} {self.version or '-'}"
        return f"{when}Z {what}: {self.reason} (serving {self.serving or 'none'})"


def alert_rate(model: LoadedAnomalyModel, x: F32, threshold: float) -> float:
    """Share of rows ``model`` scores at or above ``threshold`` (0 for no rows)."""
    if len(x) == 0:
        return 0.0
    return float(np.mean(model.score(x) >= threshold))


def build_candidate(
    x_fit: F32,
    cfg: AnomalyConfig,
    model_dir: ModelDir,
    cache_dir: Path | str | None = None,
    *,
    training: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[LoadedAnomalyModel, dict[str, float]]:
    """Fit, write to ``versions/<version>``, compile and load a new model (not published).

    Returns the loaded model and timings (fit_s, compile_s). ModelError when the model
    cannot be written, compiled or loaded, or differs from scikit-learn on its probe rows.
    """
    if len(x_fit) < 2:
        raise ModelError(f"{len(x_fit)} flows to fit: an isolation forest needs at least 2")
    t0 = time.perf_counter()
    forest = fit_isolation_forest(x_fit, cfg.n_trees, cfg.max_samples, cfg.seed)
    model = isolation_to_treelite(forest)
    fit_s = time.perf_counter() - t0
    rng = np.random.default_rng(cfg.seed)
    probe = x_fit[rng.choice(len(x_fit), min(PROBE_ROWS, len(x_fit)), replace=False)]
    blob = model.serialize_bytes()
    now = now or datetime.now(UTC)
    version = f"{now:%Y%m%dT%H%M%SZ}-{hashlib.sha256(blob).hexdigest()[:8]}"
    staging = model_dir.staging()
    write_model(
        staging,
        model,
        version=version,
        created=now.isoformat(timespec="seconds"),
        n_trees=cfg.n_trees,
        max_samples=int(forest.max_samples_),
        probe_rows=probe,
        probe_scores=-forest.score_samples(probe),
        training={**(training or {}), "fit_rows": len(x_fit), "seed": cfg.seed},
    )
    folder = model_dir.commit(staging, version)
    t1 = time.perf_counter()
    loaded = load_model(folder, cache_dir)
    return loaded, {"fit_s": fit_s, "compile_s": time.perf_counter() - t1}


def judge(
    new: LoadedAnomalyModel,
    running: LoadedAnomalyModel | None,
    holdout: F32,
    cfg: AnomalyConfig,
) -> tuple[bool, str, float, float | None]:
    """(accept, reason, new model's holdout alert rate, running model's rate or None)."""
    new_rate = alert_rate(new, holdout, cfg.alert_threshold)
    run_rate = None if running is None else alert_rate(running, holdout, cfg.alert_threshold)
    base = run_rate if run_rate is not None else 0.0
    against = "the running model" if running is not None else "no running model (0%)"
    n = len(holdout)
    # Two standard errors of the new rate measured on n flows: a handful of flows of a
    # small holdout must not refuse a model (3 of 41 is 7%), a real excess still does.
    noise = 2.0 * math.sqrt(new_rate * (1.0 - new_rate) / n) if n else 0.0
    text = (
        f"scores {new_rate:.1%} of {n} held-back flows at or above {cfg.alert_threshold}, "
        f"{against} {'' if run_rate is None else f'{run_rate:.1%}'}".rstrip()
    )
    if new_rate > base + cfg.max_worse + noise:
        reason = (
            f"worse than allowed (max_worse {cfg.max_worse}, sampling noise {noise:.1%}): it {text}"
        )
        return False, reason, new_rate, run_rate
    return True, f"it {text}", new_rate, run_rate


def retrain(
    cfg: AnomalyConfig,
    db: Path | str,
    model_dir: Path | str,
    cache_dir: Path | str | None = None,
    *,
    until_ts: float | None = None,
    now: datetime | None = None,
) -> Decision:
    """Train on the window of ``db`` and swap the new model in, or refuse it (see module)."""
    md = ModelDir(model_dir)
    with md.training_lock():
        start = time.perf_counter()
        window = read_window(
            db,
            window_flows=cfg.window_flows,
            window_s=cfg.window_s,
            holdout_fraction=cfg.holdout_fraction,
            seed=cfg.seed,
            until_ts=until_ts,
        )
        return train_on(window, cfg, md, cache_dir, now=now, started=start)


def train_on(
    window: Window,
    cfg: AnomalyConfig,
    model_dir: ModelDir,
    cache_dir: Path | str | None = None,
    *,
    now: datetime | None = None,
    started: float | None = None,
) -> Decision:
    """Fit on ``window.fit``, judge on ``window.holdout``, then swap or refuse (recorded)."""
    start = started if started is not None else time.perf_counter()
    md = model_dir
    previous = md.current_version()
    decision = Decision(
        action="skip",
        reason="",
        previous=previous,
        serving=previous,
        window=window.to_json(),
        read_s=round(time.perf_counter() - start, 3),
    )
    if window.rows < cfg.min_flows:
        decision.reason = (
            f"{window.rows} flows in the window, anomaly.min_flows is {cfg.min_flows}: not trained"
        )
        return _finish(md, decision, start)
    running: LoadedAnomalyModel | None = None
    if previous:
        try:
            running = md.load_current(cache_dir)
        except Exception as exc:  # judged as if none served; a new one must still load
            log.warning("the serving anomaly model does not load, judged without it: %s", exc)
    try:
        new, timings = build_candidate(
            window.fit, cfg, md, cache_dir, training={"window": window.to_json()}, now=now
        )
    except Exception as exc:  # ModelError, or a library's own: the old model keeps serving
        decision.action = "refuse"
        what = "" if isinstance(exc, ModelError) else f"{type(exc).__name__}: "
        decision.reason = f"the new model does not build, compile or load: {what}{exc}"
        return _finish(md, decision, start)
    decision.version = new.version
    decision.fit_s = round(timings["fit_s"], 3)
    decision.compile_s = round(timings["compile_s"], 3)
    if previous and new.version.rsplit("-", 1)[-1] == previous.rsplit("-", 1)[-1]:
        decision.reason = "the same trees as the serving model (same window and settings)"
        if new.version != previous:  # the duplicate, not the serving folder
            shutil.rmtree(md.folder(new.version), ignore_errors=True)
        return _finish(md, decision, start)
    ok, reason, new_rate, run_rate = judge(new, running, window.holdout, cfg)
    decision.holdout_rate_new = round(new_rate, 6)
    decision.holdout_rate_running = None if run_rate is None else round(run_rate, 6)
    decision.reason = reason
    if ok:
        md.publish(new.version)
        decision.action = "swap"
        decision.serving = new.version
    else:
        decision.action = "refuse"
    return _finish(md, decision, start)


def _finish(md: ModelDir, decision: Decision, start: float) -> Decision:
    decision.total_s = round(time.perf_counter() - start, 3)
    md.record(decision.to_json())
    level = logging.WARNING if decision.action == "refuse" else logging.INFO
    log.log(level, "anomaly model: %s", decision.summary())
    return decision
