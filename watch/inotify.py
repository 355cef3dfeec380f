"""Linux inotify through ctypes (libc's inotify_init1, inotify_add_watch; read(2)).

No new dependency: the three calls and the ``struct inotify_event`` layout are stable
kernel ABI. :class:`Inotify` watches folders for files that appear (IN_CREATE), are
closed after writing (IN_CLOSE_WRITE) or are renamed in (IN_MOVED_TO), and for new
subfolders. :func:`inotify_unavailable` says why inotify cannot be trusted for a folder
(no libc symbol, instance or watch limits, a network or FUSE filesystem whose changes
made elsewhere the kernel never sees), so the caller falls back to polling and says why.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_ISDIR",
    "IN_MOVED_TO",
    "IN_Q_OVERFLOW",
    "Inotify",
    "InotifyError",
    "InotifyEvent",
    "inotify_unavailable",
]

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_ONLYDIR
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

# Filesystems where inotify sees only this host's changes (or none): poll them instead.
_REMOTE_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "virtiofs",
        "vboxsf",
        "fuse",
        "fuseblk",
    }
)


class InotifyError(OSError):
    """inotify could not be set up for a folder (the errno says why)."""


@dataclass(frozen=True)
class InotifyEvent:
    path: Path  # the file or folder the event is about
    mask: int

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & IN_ISDIR)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fs_type(folder: Path) -> str:
    """The filesystem type of the mount that holds ``folder`` (/proc/self/mounts)."""
    target = os.path.realpath(folder)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return ""
    return kind


def inotify_unavailable(folder: Path) -> str | None:
    """Why inotify should not be used for ``folder``; None when it can be."""
    kind = _fs_type(folder)
    if kind in _REMOTE_FS or kind.startswith("fuse."):
        return f"{folder} is on a {kind} filesystem, where inotify misses changes made elsewhere"
    try:
        libc = _libc()
        libc.inotify_init1  # noqa: B018 - the symbol must exist
    except (OSError, AttributeError) as exc:
        return f"no inotify in libc ({exc})"
    return None


class Inotify:
    """An inotify instance watching folders; events are read with a timeout."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            hint = " (fs.inotify.max_user_instances reached)" if err == errno.EMFILE else ""
            raise InotifyError(err, f"inotify_init1: {os.strerror(err)}{hint}")
        self.fd: int = fd
        self._dirs: dict[int, Path] = {}
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def add(self, folder: Path) -> None:
        """Watch ``folder`` (not its subfolders: add each)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            hint = " (fs.inotify.max_user_watches reached)" if err == errno.ENOSPC else ""
            raise InotifyError(err, f"inotify_add_watch {folder}: {os.strerror(err)}{hint}")
        self._dirs[wd] = folder

    def read(self, timeout_s: float) -> list[InotifyEvent]:
        """The events that arrive within ``timeout_s`` (all that are queued once one is)."""
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return []
        out: list[InotifyEvent] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            out.extend(self._parse(data))

    def _parse(self, data: bytes) -> Iterator[InotifyEvent]:
        pos = 0
        while pos + _HEADER.size <= len(data):
            wd, mask, _cookie, size = _HEADER.unpack_from(data, pos)
            name = data[pos + _HEADER.size : pos + _HEADER.size + size].rstrip(b"\0")
            pos += _HEADER.size + size
            if mask & IN_Q_OVERFLOW:
                yield InotifyEvent(Path(), IN_Q_OVERFLOW)
                continue
            folder = self._dirs.get(wd)
            if folder is None:
                continue
            if mask & IN_IGNORED:
                del self._dirs[wd]
                continue
            yield InotifyEvent(folder / os.fsdecode(name) if name else folder, mask)

    def close(self) -> None:
        os.close(self.fd)
