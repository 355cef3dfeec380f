"""The adaptive anomaly model: an isolation forest over recent traffic, kept fresh.

::

    rag event store -> window.py (newest flows, 54 features) -> train.py (IsolationForest,
        isolation.py: treelite -> native, model.py: versioned folder, checked on load)
        -> judge on held-back flows -> versions.py: `current` pointer + history.json
    mld detector run watches `current` (detector/reload.py) and swaps the model between batches
    service.py: mld anomaly run (retrains on a schedule, reports to the control plane)
    cli.py: mld anomaly train | run | status

Only the settings are imported with the package; the rest loads on first use, so the
config loader does not pull in scikit-learn and treelite.
"""

from __future__ import annotations

from typing import Any

from anomaly.config import AnomalyConfig

__all__ = [
    "AnomalyConfig",
    "Decision",
    "LoadedAnomalyModel",
    "ModelDir",
    "load_model",
    "read_window",
    "retrain",
]

_LAZY = {
    "Decision": "anomaly.train",
    "retrain": "anomaly.train",
    "LoadedAnomalyModel": "anomaly.model",
    "load_model": "anomaly.model",
    "ModelDir": "anomaly.versions",
    "read_window": "anomaly.window",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anomaly' has no attribute {name!r}")
