"""The capture watch folder: ``mld watch run DIR`` (watch/README.md)."""

from watch.config import WatchConfig
from watch.service import Analysis, FileResult, RetrainHook, Watcher
from watch.state import WatchState, file_key, state_path
from watch.wiring import anomaly_retrain, detection_analyser

__all__ = [
    "Analysis",
    "FileResult",
    "RetrainHook",
    "WatchConfig",
    "WatchState",
    "Watcher",
    "anomaly_retrain",
    "detection_analyser",
    "file_key",
    "state_path",
]
