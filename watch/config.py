"""Typed settings of the capture watch folder (the ``watch`` section of mld.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WatchConfig"]


@dataclass(frozen=True)
class WatchConfig:
    # Seconds a capture file must keep the same size and mtime, with no process holding it
    # open for writing, before it is read.
    settle_s: float = 5.0
    # ... after its writer closed it (inotify IN_CLOSE_WRITE) or it was renamed into the
    # folder (IN_MOVED_TO): a shorter wait, for writers that reopen the file to append.
    closed_settle_s: float = 0.5
    # Seconds between scans of the folder when polling (--poll, or inotify unavailable),
    # and the longest wait before a file held open for writing is looked at again.
    poll_interval_s: float = 2.0
    # The anomaly model is trained again after every this many capture files analysed
    # (0: never).
    retrain_every_files: int = 20
    # Where a file that cannot be read is moved, with <name>.reason.json beside it; empty
    # means beside the state file (<state file without .json>.failed). Never inside the
    # watched folder: whoever drops files there would control it (refused at start).
    failed_dir: str = ""
    # Owners (user names or uids) whose files are read besides root and the watcher's own
    # user; "*" for anyone. Files of other owners are refused (not read, not moved).
    allowed_owners: tuple[str, ...] = ()
    # The watcher's state (files analysed, counters, last retrain); empty means
    # <node.state_dir>/watch/<hash of the folder's path>.json.
    state_file: str = ""
    # Watch the folder's subfolders too (hidden ones, such as .failed, never).
    recursive: bool = False
    # Files remembered as analysed beyond those still in the folder (the state stays small).
    remember_files: int = 10000
    # Sensor id stored with the events of the watched captures.
    sensor: str = "watch"
