"""The watcher's state file: which capture files were analysed, counters, last retrain.

JSON, written atomically (a temporary file in the same folder, fsync, rename) after every
file, so a watcher killed at any moment restarts from the last file it finished. A file
is known by :func:`file_key`; besides the key, each entry keeps the path, size, mtime and
inode it had, so a restart recognises the files still in the folder from one ``stat``
without reading them again (a copy, or a file that changed, is read and hashed). The list
is bounded: entries of files still in the folder are kept, plus the ``remember`` most
recent others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import WatchError

__all__ = ["COUNTERS", "FileEntry", "WatchState", "file_key", "state_path"]

log = logging.getLogger(__name__)

_VERSION = 1
_EDGE = 1 << 16  # bytes hashed at each end of a file
COUNTERS = (
    "files_ok",
    "files_partial",
    "files_failed",
    "flows",
    "events",
    "alerts",
    "files_refused",
)


def state_path(folder: Path, configured: str, state_dir: str) -> Path:
    """``configured``, else <state_dir>/watch/<first 16 hex of sha256(real path)>.json."""
    if configured:
        return Path(configured)
    digest = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:16]
    return Path(state_dir) / "watch" / f"{digest}.json"


def file_key(source: Path | int, size: int) -> str:
    """A capture's identity: its size and a SHA-256 of its first and last 64 KiB.

    ``source`` is the file's open descriptor (the watcher hashes the file it checked) or a
    path, opened without following a link.

    From the content, not the inode or mtime: a file renamed, copied back, touched, or
    restored to another filesystem is still the same capture and is not analysed twice,
    while two captures of the same size differ in their first packets' timestamps. Two
    reads of 64 KiB cost nothing next to the analysis.
    """
    if not isinstance(source, int):
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return file_key(fd, size)
        finally:
            os.close(fd)
    h = hashlib.sha256(str(size).encode())
    h.update(os.pread(source, _EDGE, 0))
    if size > _EDGE:
        h.update(os.pread(source, _EDGE, max(_EDGE, size - _EDGE)))
    return h.hexdigest()[:32]


@dataclass
class FileEntry:
    """One analysed (or failed) file, as it was when it was read."""

    path: str
    size: int
    mtime_ns: int
    ino: int
    status: str  # ok, partial (read up to an error; events kept), failed (nothing stored)
    events: int
    at: float  # when it was analysed, s since the epoch


@dataclass
class WatchState:
    """What survives a restart; :meth:`save` after every change that matters."""

    path: Path
    folder: str
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    files: dict[str, FileEntry] = field(default_factory=dict)  # key -> entry, oldest first
    files_at_last_retrain: int = 0
    last_retrain: dict[str, Any] | None = None

    @property
    def files_analysed(self) -> int:
        """Files whose events were stored (whole or up to a read error)."""
        return self.counters["files_ok"] + self.counters["files_partial"]

    @classmethod
    def load(cls, path: Path, folder: Path) -> WatchState:
        state = cls(path, str(folder))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            raise WatchError(
                f"cannot read the watch state {path}: {exc}; move it aside to start over "
                "(files whose events are in the store are still recognised there)"
            ) from exc
        if data.get("version") != _VERSION:
            raise WatchError(f"{path}: watch state version {data.get('version')!r} is not 1")
        for name in COUNTERS:
            state.counters[name] = int(data.get("counters", {}).get(name, 0))
        state.files = {k: FileEntry(**v) for k, v in data.get("files", {}).items()}
        state.files_at_last_retrain = int(data.get("files_at_last_retrain", 0))
        state.last_retrain = data.get("last_retrain")
        return state

    def record(self, key: str, entry: FileEntry) -> None:
        self.files.pop(key, None)
        self.files[key] = entry  # most recent last

    def prune(self, remember: int) -> int:
        """Forget the oldest entries of files no longer where they were, beyond the
        ``remember`` most recent; returns how many were forgotten."""
        if len(self.files) <= remember:
            return 0
        keys = list(self.files)
        old = keys[: len(keys) - remember]
        gone = [k for k in old if not os.path.exists(self.files[k].path)]
        for k in gone:
            del self.files[k]
        return len(gone)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "folder": self.folder,
            "saved_at": time.time(),
            "counters": self.counters,
            "files_at_last_retrain": self.files_at_last_retrain,
            "last_retrain": self.last_retrain,
            "files": {k: vars(v) for k, v in self.files.items()},
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
