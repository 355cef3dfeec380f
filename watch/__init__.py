"""The capture watch folder: ``mld watch run DIR`` (watch/README.md)."""

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
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

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "watch.config": ("WatchConfig",),
        "watch.service": (
            "Analysis",
            "FileResult",
            "RetrainHook",
            "Watcher",
        ),
        "watch.state": (
            "WatchState",
            "file_key",
            "state_path",
        ),
        "watch.wiring": (
            "anomaly_retrain",
            "detection_analyser",
        ),
    },
)
