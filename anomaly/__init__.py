"""Training the adaptive anomaly model: an isolation forest over recent traffic, kept fresh.

::

    rag event store -> window.py (newest flows, 54 features) -> train.py (IsolationForest,
        isolation.py: treelite -> native; the version folder and its checks are
        detector/anomaly_model.py) -> judge on held-back flows
        -> versions.py: `current` pointer + history.json
    mld detector run serves `current` (detector/anomaly_model.py, watched by detector/reload.py)
    service.py: mld anomaly run (retrains on a schedule, reports to the control plane)
    cli.py: mld anomaly train | run | status

The settings (``anomaly`` in mld.yaml) are ``detector.config.AnomalyConfig``: the
detector serves what this package trains, so this package builds on detector/ and
never the reverse. Nothing is imported with the package; the rest loads on first use, so
the command line does not pull in scikit-learn and treelite.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Decision",
    "ModelDir",
    "read_window",
    "retrain",
]

_LAZY = {
    "Decision": "anomaly.train",
    "retrain": "anomaly.train",
    "ModelDir": "anomaly.versions",
    "read_window": "anomaly.window",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anomaly' has no attribute {name!r}")
