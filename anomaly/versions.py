"""The model folder: versions, the ``current`` pointer and the decision history.

Layout of ``anomaly.model_dir`` (default ``<node.state_dir>/anomaly``)::

    versions/<version>/   one folder per trained model (anomaly/model.py)
    current               the serving version's name, one line; replaced by rename, so a
                          reader sees the old name or the new one, never half of one
    history.json          the last HISTORY_KEEP decisions (swap, refuse, skip), newest last
    .train.lock           held by a trainer from reading its window to recording its
                          decision, so two trainers (``mld anomaly run``, ``mld watch``'s
                          retrain) take turns: the second judges against the first's model

The detector watches ``current`` (detector/reload.py with :func:`pointer_signature`) and
loads the folder it names in the background. Old versions are pruned: the serving one
and the KEEP_VERSIONS newest others stay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from anomaly.model import LoadedAnomalyModel, load_model
from base.errors import ModelError
from base.filelock import file_lock
from detector.bundle import atomic_write
from detector.reload import Signature

__all__ = [
    "HISTORY_KEEP",
    "KEEP_VERSIONS",
    "ModelDir",
    "pointer_signature",
]

log = logging.getLogger(__name__)

HISTORY_KEEP = 100
KEEP_VERSIONS = 3
CURRENT = "current"
HISTORY = "history.json"


def pointer_signature(model_dir: Path) -> Signature:
    """What the detector's watcher compares: the ``current`` file's name, size, mtime."""
    try:
        st = os.stat(Path(model_dir) / CURRENT)
    except OSError:
        return None
    return ((CURRENT, st.st_size, st.st_mtime_ns),)


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
        try:
            return (self.path / CURRENT).read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def folder(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ModelError(f"{self.path}: bad anomaly model version name {version!r}")
        return self.versions / version

    def load_current(self, cache_dir: Path | str | None = None) -> LoadedAnomalyModel:
        """Load the version ``current`` names; ModelError if none or it does not load."""
        version = self.current_version()
        if not version:
            raise ModelError(
                f"no anomaly model in {self.path} yet: run `mld anomaly train` (or `mld anomaly "
                "serve`) once the event store holds anomaly.min_flows flows"
            )
        model = load_model(self.folder(version), cache_dir)
        if model.version != version:
            raise ModelError(
                f"{self.folder(version)}: holds version {model.version}, {CURRENT} names {version}"
            )
        return model

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
