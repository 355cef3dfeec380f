"""``mld anomaly run``: retrain the anomaly model on a schedule, in its own process.

Every ``anomaly.retrain_interval_s`` (and once at start) the service runs
:func:`anomaly.train.retrain` on the event store: the window is read, a model fitted,
compiled, judged against the serving one on held-back flows, and swapped in (the
``current`` pointer) or refused. Training runs here, never in the detector: the detectors
only load a finished, checked model, in a background thread.

With ``control.endpoints`` set it registers as ``anomaly/<node id>``; its health carries
the serving version and the last decision, and every decision is also reported under
``status/anomaly/<id>/model`` (``mld status`` prints it). Without etcd it runs from the
file alone. SIGTERM or Ctrl-C stops it after the training in progress (``mld anomaly
serve`` hands :meth:`request_stop` to base.signals.stop_on_signals).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from anomaly.train import Decision, retrain
from anomaly.versions import ModelDir
from base.errors import MldError
from control import ControlState, FollowsControl, stats_from_other_thread
from detector.config import AnomalyConfig

__all__ = ["AnomalyService"]

log = logging.getLogger(__name__)

_POLL_S = 1.0  # how often the waiting loop looks at the control plane and for stop


class AnomalyService(FollowsControl):
    """Retrains every ``interval_s`` until stopped."""

    def __init__(
        self,
        cfg: AnomalyConfig,
        db: Path,
        model_dir: Path,
        cache_dir: Path | str | None = None,
        *,
        interval_s: float | None = None,
    ) -> None:
        cfg.check()
        self.cfg = cfg
        self.db = Path(db)
        self.model_dir = ModelDir(model_dir)
        self.cache_dir = cache_dir
        self.interval_s = interval_s if interval_s is not None else cfg.retrain_interval_s
        self.counters: Counter[str] = Counter()
        self.last: Decision | None = None
        self._stop = threading.Event()

    def apply_control(self, state: ControlState[Any]) -> None:
        """Nothing of its own: polling keeps the keyring and the log level in step."""

    def run_once(self) -> Decision | None:
        """One training; its decision (None when it failed before deciding, logged)."""
        self.counters["trainings"] += 1
        try:
            decision = retrain(self.cfg, self.db, self.model_dir.path, self.cache_dir)
        except MldError as exc:
            self.counters["errors"] += 1
            log.error("anomaly training failed: %s (tried again in %.0f s)", exc, self.interval_s)
            return None
        self.counters[decision.action] += 1
        self.last = decision
        if self.plane is not None:
            self.plane.report("model", {**decision.to_json(), "summary": decision.summary()})
        return decision

    def run(self, max_rounds: int | None = None) -> None:
        """Train now and then every interval, until stopped (or ``max_rounds`` done)."""
        log.info(
            "anomaly trainer: store %s, models in %s, every %.0f s (serving %s)",
            self.db,
            self.model_dir.path,
            self.interval_s,
            self.model_dir.current_version() or "none",
        )
        rounds = 0
        try:
            while not self._stop.is_set():
                self.run_once()
                rounds += 1
                if max_rounds is not None and rounds >= max_rounds:
                    return
                deadline = time.monotonic() + self.interval_s
                while not self._stop.is_set() and time.monotonic() < deadline:
                    self.follow_control()
                    self._stop.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            log.info("interrupted: stopping")

    def request_stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "serving": self.model_dir.current_version() or "none",
            "trainings": 0,
            "swap": 0,
            "refuse": 0,
            "skip": 0,
            "errors": 0,
        }
        out.update(sorted(self.counters.items()))
        if self.last is not None:
            out["last_action"] = self.last.action
            out["last_version"] = self.last.version
            out["last_reason"] = self.last.reason[:300]
            out["last_ts"] = round(self.last.ts, 3)
        return out

    def health(self) -> tuple[str, dict[str, object]]:
        return "ok", stats_from_other_thread(self.stats)
