"""Typed settings of the anomaly model (the ``anomaly`` section of mld.yaml).

Every default is written, commented, in config/mld.yaml; a test keeps the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from base.errors import ConfigError

__all__ = ["AnomalyConfig"]


@dataclass(frozen=True)
class AnomalyConfig:
    # Score every flow with the anomaly model too (family "anomaly"); false: the detector
    # runs no anomaly model and its verdicts are what they were without one.
    enabled: bool = False
    # Folder of the model versions, the "current" pointer and the decision history; empty
    # means <node.state_dir>/anomaly.
    model_dir: str = ""
    # The training window: at most this many of the newest stored flows ...
    window_flows: int = 200000
    # ... that started at most this many seconds before the newest stored flow (30 days).
    window_s: float = 2592000.0
    # Fewest flows in the window to train on; with fewer, training is skipped.
    min_flows: int = 1000
    # Seconds between trainings of `mld anomaly run`.
    retrain_interval_s: float = 3600.0
    # Isolation trees in the model.
    n_trees: int = 100
    # Flows each tree is grown on (drawn from the window; sets the depth, log2 of it).
    max_samples: int = 256
    # Share of the window held back from fitting, to judge the new model against the
    # running one before it is swapped in.
    holdout_fraction: float = 0.1
    # Anomaly score (0-1; ordinary flows score about 0.5 and below) at or above which a
    # flow is an alert (suspicious).
    alert_threshold: float = 0.6
    # Let the anomaly family block: a flow at or above detector.thresholds.block is then
    # malicious. false: the anomaly family alerts, it never makes a verdict malicious.
    block: bool = False
    # A new model is refused when the share of held-back flows it scores at or above
    # alert_threshold exceeds the running model's share by more than this (plus two
    # standard errors of that share, so a few flows of a small holdout do not count).
    max_worse: float = 0.05
    # Seed of the window split and of the trees.
    seed: int = 1

    def path(self, state_dir: str) -> Path:
        """The model folder: ``model_dir``, or ``<state_dir>/anomaly``."""
        return Path(self.model_dir) if self.model_dir else Path(state_dir) / "anomaly"

    def check(self) -> None:
        """Raise ConfigError for values training or scoring cannot work with."""
        problems = []
        for key in ("alert_threshold", "holdout_fraction", "max_worse"):
            value = getattr(self, key)
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                problems.append(f"{key} is {value}, expected a number in [0, 1]")
        if not self.holdout_fraction < 0.9:
            problems.append(f"holdout_fraction is {self.holdout_fraction}, expected below 0.9")
        for key in ("window_flows", "min_flows", "n_trees", "max_samples"):
            if getattr(self, key) < 1:
                problems.append(f"{key} is {getattr(self, key)}, expected at least 1")
        if self.min_flows > self.window_flows:
            problems.append(f"min_flows ({self.min_flows}) exceeds window_flows")
        for key in ("window_s", "retrain_interval_s"):
            if not getattr(self, key) > 0:
                problems.append(f"{key} is {getattr(self, key)}, expected above 0")
        if problems:
            raise ConfigError("invalid anomaly settings: " + "; ".join(problems))
