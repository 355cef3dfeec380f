"""``file_lock``: an advisory lock (flock) on a file, for processes that share a folder.

Used where two ML Defender processes may write the same files: the RAG store's saved
indexes (``mld rag run`` and ``mld watch``), an anomaly model folder (``mld anomaly
serve`` and ``mld watch``'s retrain). The lock goes with the open file: a process that
dies releases it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    shared: bool = False,
    optional: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold ``path`` (created if missing) locked, exclusive or ``shared``, for the block.

    ``on_wait`` is called once when another process holds it and this one must wait.
    ``optional``: when the file cannot be opened (a read-only folder), run the block
    without the lock instead of raising OSError."""
    try:
        fd = open(path, "a+b")  # noqa: SIM115 (closed below)
    except OSError:
        if not optional:
            raise
        yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with fd:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
