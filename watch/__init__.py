"""The capture watch folder: ``mld watch run DIR`` (watch/README.md)."""

from watch.config import WatchConfig
from watch.service import Analysis, FileResult, RetrainHook, Watcher, anomaly_retrain
from watch.state import WatchState, file_key, state_path

__all__ = [
    "Analysis",
    "FileResult",
    "RetrainHook",
    "WatchConfig",
    "WatchState",
    "Watcher",
    "anomaly_retrain",
    "file_key",
    "state_path",
]
