"""When a capture file in the watched folder is finished and may be read.

A capture being written looks exactly like a truncated one, so a file is read only when
it is done:

* **No process holds it open for writing.** First with a read lease
  (``fcntl(F_SETLEASE, F_RDLCK)``, taken and dropped at once): the kernel refuses it with
  EAGAIN while any open file description of the inode is writable, whichever process or
  container holds it, in O(1). A lease needs the file's owner or CAP_LEASE and a local
  filesystem; where it cannot be taken (EPERM, EINVAL, EACCES, leases disabled), every
  ``/proc/<pid>/fd`` link is compared with the file and its ``fdinfo`` flags read: O(open
  descriptors on the host), about a millisecond on a busy host, done only for a file whose
  settle time has passed, and blind to processes this user cannot see. A writer on
  another host (NFS, SMB) is invisible to both: the settle time is what is left.
* **Its size and mtime have not changed for** ``settle_s`` (``closed_settle_s`` after
  inotify reported it closed after writing or renamed into the folder: a strong "done"
  signal, the short wait guards writers that reopen the file to append). Stability is
  measured on this host's monotonic clock between our own looks at the file, never from
  the mtime's age, which a skewed NFS server clock would make lie.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pending", "held_for_writing"]

log = logging.getLogger(__name__)

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_UNLCK = fcntl.F_UNLCK
_F_RDLCK = fcntl.F_RDLCK
_lease_warned = False


def _writers_from_proc(path: Path) -> bool:
    """Whether a visible process has ``path`` open for writing (/proc/*/fd scan)."""
    try:
        target = os.path.realpath(path)
    except OSError:
        return False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to see
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != target:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                    for line in info:
                        if line.startswith("flags:"):
                            if int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY:
                                return True
                            break
            except (OSError, ValueError):
                continue
    return False


def held_for_writing(path: Path) -> bool:
    """Whether some process has ``path`` open for writing (see the module docstring)."""
    global _lease_warned
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # gone or a link: the watcher's own open says so
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # a FIFO or device: the watcher refuses it
        fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return True
        if not _lease_warned:
            _lease_warned = True
            log.warning(
                "cannot take a file lease on %s (%s): looking for writers in /proc "
                "instead (this host's processes only)",
                path,
                os.strerror(exc.errno or 0),
            )
        return _writers_from_proc(path)
    else:
        fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
        return False
    finally:
        os.close(fd)


@dataclass
class Pending:
    """A capture file seen in the folder and not read yet."""

    size: int
    mtime_ns: int
    since: float  # monotonic time its size and mtime were first seen as they are
    closed: bool = False  # inotify said: closed after writing, or renamed in

    def update(self, size: int, mtime_ns: int, now: float) -> None:
        """A new look at the file: restart the settle time if it changed."""
        if (size, mtime_ns) != (self.size, self.mtime_ns):
            self.size, self.mtime_ns, self.since = size, mtime_ns, now
            self.closed = False

    def settled(self, now: float, settle_s: float, closed_settle_s: float) -> float:
        """Seconds left before it has been stable long enough (<= 0: long enough)."""
        need = min(closed_settle_s, settle_s) if self.closed else settle_s
        return self.since + need - now
