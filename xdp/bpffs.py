"""bpffs: find it, mount it on /sys/fs/bpf when missing, create the pin directory.

Pinned maps outlive the process that made them, which is how the firewall adds blocks to the
map the running XDP program reads. Every mount of bpffs is its own file system: processes see
each other's pins only when they see the same mount. ``ip netns exec`` remounts /sys in a
private mount namespace, so a monitor started that way pins into a private bpffs; use
``nsenter --net=/run/netns/NS`` to change only the network namespace.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import logging
import os
import re
from pathlib import Path

from base.errors import ConfigError
from xdp.errors import BpffsError

__all__ = ["BPFFS_ROOT", "check_pin_dir", "ensure_pin_dir"]

log = logging.getLogger(__name__)

BPFFS_ROOT = Path("/sys/fs/bpf")


def _bpffs_mounts() -> list[Path]:
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "bpf":
                found.append(Path(parts[1].replace("\\040", " ")))
    return found


def _inside(path: Path, mounts: list[Path]) -> bool:
    return any(path == m or m in path.parents for m in mounts)


def _mount_bpffs(where: Path) -> None:
    libc = ct.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [ct.c_char_p, ct.c_char_p, ct.c_char_p, ct.c_ulong, ct.c_void_p]
    if libc.mount(b"bpf", os.fsencode(where), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        raise BpffsError(
            f"bpffs is not mounted on {where} and mounting it failed: {os.strerror(err)}. "
            f"Mount it by hand (`mount -t bpf bpf {where}`) or run as root"
        )
    log.warning("bpffs was not mounted; mounted it on %s", where)


# Letters, digits and . _ - between slashes: the pin path is written into the BPF
# program's compile flags (-DMLD_BLOCKLIST_PIN="..."), where a quote, a space or a
# backslash would be read as more flags (issue 19, finding 2).
_SAFE_PIN_DIR = re.compile(r"/sys/fs/bpf(/[A-Za-z0-9_.-]+)*")


def check_pin_dir(pin_dir: str | Path, what: str = "node.xdp_pin_dir") -> Path:
    """``pin_dir`` if it is an absolute path under /sys/fs/bpf made of safe characters
    (letters, digits, ``.``, ``_``, ``-``) without ``..``; ConfigError otherwise."""
    text = str(pin_dir)
    parts = text.split("/")
    if not _SAFE_PIN_DIR.fullmatch(text) or ".." in parts or "." in parts:
        raise ConfigError(
            f"{what} {text!r} is not a safe bpffs folder: give an absolute path under "
            f"{BPFFS_ROOT} made of letters, digits, '.', '_' and '-' (for example "
            f"{BPFFS_ROOT}/mld); it is written into the XDP program's compile flags"
        )
    return Path(text)


def ensure_pin_dir(pin_dir: str | Path) -> Path:
    """Make sure pin_dir exists inside a bpffs mount (mounting /sys/fs/bpf if needed)."""
    path = check_pin_dir(pin_dir).resolve()
    if not _inside(path, _bpffs_mounts()):
        if not (path == BPFFS_ROOT or BPFFS_ROOT in path.parents):
            raise BpffsError(
                f"pin directory {path} is not inside a bpffs mount; use a path under "
                f"{BPFFS_ROOT} or mount bpffs there first (`mount -t bpf bpf DIR`)"
            )
        if not BPFFS_ROOT.is_dir():
            raise BpffsError(f"{BPFFS_ROOT} does not exist: is sysfs mounted on /sys?")
        _mount_bpffs(BPFFS_ROOT)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BpffsError(f"cannot create pin directory {path}: {exc.strerror}") from exc
    return path
