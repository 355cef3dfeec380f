"""Thin ctypes wrappers over the bpf() syscall helpers that libbcc exports (libbpf's API).

Used where BCC's Python tables do not help: opening a pinned map from another process,
atomic lookup-and-delete, and batch reads into buffers allocated once. Every function raises
OSError with the errno on failure; callers translate it into an :mod:`xdp.errors` error.

The only structs written here are the heads of the kernel's ``struct bpf_map_info`` and
``struct bpf_prog_info`` (kernel ABI, not ML Defender structs): the first checks that a
pinned map has the expected type and key/value sizes before we write to it, the second finds
the programs that use a map.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import os
from collections.abc import Iterator
from typing import Any

BPF_MAP_TYPE_LPM_TRIE = 11
BPF_PROG_TYPE_XDP = 6
BPF_NOEXIST = 1

_lib: Any = None


def lib() -> Any:
    """libbcc with argument types declared for the calls this module makes."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bcc") or "libbcc.so.0"
        h = ct.CDLL(name, use_errno=True)
        vp, u32p = ct.c_void_p, ct.POINTER(ct.c_uint32)
        h.bpf_obj_get.argtypes = [ct.c_char_p]
        h.bpf_obj_get.restype = ct.c_int
        h.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, vp, u32p]
        h.bpf_obj_get_info_by_fd.restype = ct.c_int
        h.bpf_prog_get_next_id.argtypes = [ct.c_uint32, u32p]
        h.bpf_prog_get_next_id.restype = ct.c_int
        h.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]
        h.bpf_prog_get_fd_by_id.restype = ct.c_int
        for fn in ("bpf_map_lookup_elem", "bpf_map_lookup_and_delete_elem"):
            getattr(h, fn).argtypes = [ct.c_int, vp, vp]
            getattr(h, fn).restype = ct.c_int
        h.bpf_map_update_elem.argtypes = [ct.c_int, vp, vp, ct.c_uint64]
        h.bpf_map_update_elem.restype = ct.c_int
        h.bpf_map_delete_elem.argtypes = [ct.c_int, vp]
        h.bpf_map_delete_elem.restype = ct.c_int
        h.bpf_map_get_next_key.argtypes = [ct.c_int, vp, vp]
        h.bpf_map_get_next_key.restype = ct.c_int
        h.bpf_map_lookup_batch.argtypes = [ct.c_int, vp, vp, vp, vp, u32p, vp]
        h.bpf_map_lookup_batch.restype = ct.c_int
        _lib = h
    return _lib


def _check(res: int, what: str) -> int:
    if res < 0:
        err = ct.get_errno() or -res
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


class MapInfo(ct.Structure):
    """Head of the kernel's struct bpf_map_info (include/uapi/linux/bpf.h)."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
    )


class ProgInfo(ct.Structure):
    """Head of the kernel's struct bpf_prog_info, up to ifindex (include/uapi/linux/bpf.h)."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
        ("ifindex", ct.c_uint32),
    )


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new file descriptor."""
    return _check(lib().bpf_obj_get(os.fsencode(path)), f"open pinned {path}")


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "map info")
    return info


def prog_ids() -> Iterator[int]:
    """Ids of every BPF program loaded on the host (all network namespaces)."""
    cur = ct.c_uint32(0)
    while lib().bpf_prog_get_next_id(cur.value, ct.byref(cur)) == 0:
        yield cur.value
    err = ct.get_errno()
    if err != errno.ENOENT:
        _check(-1, "program get-next-id")


def prog_info(prog_id: int) -> tuple[ProgInfo, list[int]] | None:
    """A program's info head and the ids of the maps it uses; None when it is gone."""
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        if ct.get_errno() == errno.ENOENT:
            return None
        _check(-1, f"open program {prog_id}")
    try:
        for _ in range(3):  # the count can only change if the program is replaced: retry
            info = ProgInfo()
            size = ct.c_uint32(ct.sizeof(info))
            _check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "prog info")
            n = info.nr_map_ids
            ids = (ct.c_uint32 * max(n, 1))()
            info = ProgInfo(nr_map_ids=n, map_ids=ct.addressof(ids))
            size = ct.c_uint32(ct.sizeof(info))
            _check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "prog info")
            if info.nr_map_ids <= n:
                return info, list(ids[: info.nr_map_ids])
        raise OSError(errno.EAGAIN, f"program {prog_id}: map list keeps changing")
    finally:
        os.close(fd)


def lookup(fd: int, key: Any, value: Any) -> bool:
    """Fill value for key; False when the key is absent."""
    if lib().bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(value)) < 0:
        if ct.get_errno() == errno.ENOENT:
            return False
        _check(-1, "map lookup")
    return True


def lookup_and_delete(fd: int, key: Any, value: Any) -> bool:
    """Read and remove key atomically; False when it was already gone."""
    if lib().bpf_map_lookup_and_delete_elem(fd, ct.byref(key), ct.byref(value)) < 0:
        if ct.get_errno() == errno.ENOENT:
            return False
        _check(-1, "map lookup-and-delete")
    return True


def update(fd: int, key: Any, value: Any, flags: int = 0) -> None:
    _check(lib().bpf_map_update_elem(fd, ct.byref(key), ct.byref(value), flags), "map update")


def delete(fd: int, key: Any) -> bool:
    """Remove key; False when it was absent."""
    if lib().bpf_map_delete_elem(fd, ct.byref(key)) < 0:
        if ct.get_errno() == errno.ENOENT:
            return False
        _check(-1, "map delete")
    return True


def next_key(fd: int, key: Any | None, out: Any) -> bool:
    """Store the key after key (the first one when None) in out; False at the end."""
    prev = None if key is None else ct.byref(key)
    if lib().bpf_map_get_next_key(fd, prev, ct.byref(out)) < 0:
        if ct.get_errno() == errno.ENOENT:
            return False
        _check(-1, "map get-next-key")
    return True


def lookup_batches(fd: int, keys: ct.Array[Any], values: ct.Array[Any]) -> Iterator[int]:
    """BPF_MAP_LOOKUP_BATCH over a whole hash map, one buffer-full at a time.

    Yields how many entries of keys/values the latest batch filled; the buffers are reused,
    so the caller consumes them before asking for the next batch. Entries added or removed
    while the walk runs may or may not be seen (the kernel walks bucket by bucket).
    """
    token = ct.c_uint32(0)
    first = True
    while True:
        count = ct.c_uint32(len(keys))
        res = lib().bpf_map_lookup_batch(
            fd,
            None if first else ct.byref(token),
            ct.byref(token),
            ct.addressof(keys),
            ct.addressof(values),
            ct.byref(count),
            None,
        )
        err = ct.get_errno()
        first = False
        if count.value:
            yield count.value
        if res < 0:
            if err == errno.ENOENT:  # the whole map was read
                return
            _check(-1, "map lookup-batch")
        if count.value == 0:
            return
