"""The model folder, publishing side: versions, the ``current`` pointer, the history.

Layout of ``anomaly.model_dir`` (default ``<node.state_dir>/anomaly``)::

    versions/<version>/   one folder per trained model (detector/anomaly_model.py)
    current               the serving version's name, one line; replaced by rename, so a
                          reader sees the old name or the new one, never half of one
    history.json          the last HISTORY_KEEP decisions (swap, refuse, skip), newest last
    .train.lock           held by a trainer from reading its window to recording its
                          decision, so two trainers (``mld anomaly run``, ``mld watch``'s
                          retrain) take turns: the second judges against the first's model

The detector reads ``current`` and the version folders (detector/anomaly_model.py, which
defines both); this module writes them. Old versions are pruned: the serving one and
the KEEP_VERSIONS newest others stay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from base.errors import ModelError
from base.filelock import file_lock
from detector.anomaly_model import (
    CURRENT,
    LoadedAnomalyModel,
    current_version,
    load_current,
    version_folder,
)
from detector.bundle import atomic_write

__all__ = ["HISTORY_KEEP", "KEEP_VERSIONS", "ModelDir"]

log = logging.getLogger(__name__)

HISTORY_KEEP = 100
KEEP_VERSIONS = 3
HISTORY = "history.json"


class ModelDir:
    """One model folder (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.versions = self.path / "versions"

    def training_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while one trainer reads, trains, judges, publishes and records."""
        self.path.mkdir(parents=True, exist_ok=True)

        def waiting() -> None:
            log.info("another trainer is training on %s: waiting for it", self.path)

        return file_lock(self.path / ".train.lock", on_wait=waiting)

    def current_version(self) -> str:
        """The serving version's name, or '' when none was published."""
        return current_version(self.path)

    def folder(self, version: str) -> Path:
        return version_folder(self.path, version)

    def load_current(self, cache_dir: Path | str | None = None) -> LoadedAnomalyModel:
        """Load the version ``current`` names (as the detector does); ModelError if none."""
        return load_current(self.path, cache_dir)

    def staging(self) -> Path:
        """A fresh hidden folder to write a candidate into (renamed by :meth:`commit`)."""
        self.versions.mkdir(parents=True, exist_ok=True)
        tmp = self.versions / f".staging-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def commit(self, staging: Path, version: str) -> Path:
        """Move a written candidate to ``versions/<version>`` (not yet serving)."""
        final = self.folder(version)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def publish(self, version: str) -> None:
        """Point ``current`` at ``version`` (atomic), then prune old versions."""
        if not self.folder(version).is_dir():
            raise ModelError(f"{self.folder(version)} does not exist")
        atomic_write(self.path / CURRENT, f"{version}\n".encode())
        self.prune()

    def prune(self, keep: int = KEEP_VERSIONS) -> None:
        serving = self.current_version()
        try:
            folders = [p for p in self.versions.iterdir() if not p.name.startswith(".")]
        except OSError:
            return
        others = sorted((p for p in folders if p.name != serving), key=lambda p: p.name)
        for old in others[: max(0, len(others) - keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def history(self) -> list[dict[str, Any]]:
        """The recorded decisions, oldest first ([] if none or unreadable)."""
        try:
            data = json.loads((self.path / HISTORY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []

    def record(self, decision: dict[str, Any]) -> None:
        """Append a decision to the history (the newest HISTORY_KEEP are kept)."""
        self.path.mkdir(parents=True, exist_ok=True)
        entries = [*self.history(), decision][-HISTORY_KEEP:]
        atomic_write(self.path / HISTORY, (json.dumps(entries, indent=1) + "\n").encode())
