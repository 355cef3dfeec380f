"""The structs and constants of xdp/flow_types.h, as the C compiler laid them out.

The one way Python reads the flow engine's kernel/user structs. The extension's
``structs()`` (native/structs.c) gives every struct's size and, per member, the offset,
element size, count and C type, all computed by the compiler (offsetof, sizeof,
_Generic); ``constants()`` gives every integer ``#define`` of flow_types.h. From those this
module builds what each reader needs::

    from native import structs

    structs.EVENT_DTYPE                      # struct mld_flow_event, flattened (see below)
    structs.dtype("mld_flow_state")          # NumPy dtype, nested as in C, padding hidden
    Key = structs.ctype("mld_flow_key")      # ctypes.Structure, nested, padding kept
    structs.CONSTANTS["MLD_F_INITIATOR_LO"]  # 1
    structs.STRUCTS["mld_block"].size        # 16

Readers: the offline engine's arrays and the ring buffer's records (EVENT_DTYPE), the flow
map's keys and values, the XDP counters and the timeouts (xdp/monitor.py), the blocklist's
key and value (xdp/blocklist.py), and the constants of sniffer/records.py. Nothing restates
a layout or a constant by hand.

Members named ``pad`` are padding (flow_types.h keeps every hole explicit and zero): the
ctypes classes keep them, so their layout is the C one member for member, while the NumPy
dtypes leave them out. Each ctypes class is checked against the compiler's offsets when it
is built.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

import numpy as np

from native import _flowengine

__all__ = [
    "CONSTANTS",
    "DIRECTION_PREFIXES",
    "EVENT_DTYPE",
    "STRUCTS",
    "Member",
    "Struct",
    "ctype",
    "dtype",
    "flat_dtype",
]

PAD = "pad"
_STRUCT = "struct "
_SCALARS: dict[str, tuple[Any, str]] = {
    "__u8": (ct.c_uint8, "u1"),
    "__u16": (ct.c_uint16, "u2"),
    "__u32": (ct.c_uint32, "u4"),
    "__u64": (ct.c_uint64, "u8"),
}


@dataclass(frozen=True)
class Member:
    """One member of a struct: ``count`` elements of ``size`` bytes of C type ``type``
    (``"__u32"``, or ``"struct mld_dir_stats"`` for a nested struct) at ``offset``."""

    name: str
    offset: int
    size: int
    count: int
    type: str

    @property
    def struct(self) -> str | None:
        """The nested struct's name (``"mld_dir_stats"``), None for an integer member."""
        return self.type.removeprefix(_STRUCT) if self.type.startswith(_STRUCT) else None


@dataclass(frozen=True)
class Struct:
    """A struct of flow_types.h: its size and its members in memory order (pads included)."""

    name: str
    size: int
    members: tuple[Member, ...]


STRUCTS: Mapping[str, Struct] = MappingProxyType(
    {
        name: Struct(name, size, tuple(Member(*m) for m in members))
        for name, (size, members) in _flowengine.structs().items()
    }
)
CONSTANTS: Mapping[str, int] = MappingProxyType(_flowengine.constants())


def _struct(name: str) -> Struct:
    try:
        return STRUCTS[name]
    except KeyError:
        raise KeyError(f"no struct {name!r} in flow_types.h; known: {sorted(STRUCTS)}") from None


@cache
def ctype(name: str) -> type[ct.Structure]:
    """The ctypes class of struct ``name`` (e.g. ``"mld_lpm_key"``), nested structs and
    padding members included, its layout checked against the compiler's."""
    s = _struct(name)
    fields: list[tuple[str, Any]] = []
    for m in s.members:
        base = ctype(m.struct) if m.struct else _SCALARS[m.type][0]
        fields.append((m.name, base if m.count == 1 else base * m.count))
    cls: type[ct.Structure] = type(name, (ct.Structure,), {"_fields_": fields})
    got = [(m.name, getattr(cls, m.name).offset) for m in s.members]
    if ct.sizeof(cls) != s.size or got != [(m.name, m.offset) for m in s.members]:
        raise TypeError(f"ctypes lays out struct {name} unlike the C compiler: {s}")
    return cls


def _member_dtype(m: Member) -> np.dtype[Any]:
    base = dtype(m.struct) if m.struct else np.dtype(_SCALARS[m.type][1])
    return base if m.count == 1 else np.dtype((base, (m.count,)))


@cache
def dtype(name: str) -> np.dtype[np.void]:
    """The NumPy dtype of struct ``name``, nested as in C (``state["dir"][:, 0]``), its
    itemsize the struct's size, padding members left out."""
    s = _struct(name)
    members = [m for m in s.members if m.name != PAD]
    return np.dtype(
        {
            "names": [m.name for m in members],
            "formats": [_member_dtype(m) for m in members],
            "offsets": [m.offset for m in members],
            "itemsize": s.size,
        }
    )


def flat_dtype(name: str, prefixes: Mapping[str, tuple[str, ...]]) -> np.dtype[np.void]:
    """The dtype of struct ``name`` with every nested struct flattened into scalar and
    integer-array fields, padding left out.

    A nested struct's members keep their own names; the elements of an array of structs
    ``m`` take the names of their members behind ``prefixes[m][i]``. Raises ValueError when
    an array of structs has no prefixes or two fields would share a name.
    """
    names: list[str] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []

    def walk(s: Struct, base: int, prefix: str) -> None:
        for m in s.members:
            if m.name == PAD:
                continue
            if m.struct is None:
                names.append(prefix + m.name)
                formats.append(_member_dtype(m))
                offsets.append(base + m.offset)
            elif m.count == 1:
                walk(_struct(m.struct), base + m.offset, prefix)
            else:
                pre = prefixes.get(m.name, ())
                if len(pre) != m.count:
                    raise ValueError(f"{s.name}.{m.name} needs {m.count} prefixes, got {pre}")
                for i, p in enumerate(pre):
                    walk(_struct(m.struct), base + m.offset + i * m.size, prefix + p)

    walk(_struct(name), 0, "")
    if len(set(names)) != len(names):
        raise ValueError(f"flattening struct {name} repeats a field name: {names}")
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": STRUCTS[name].size}
    )


# struct mld_flow_state's dir[0] is initiator -> responder, dir[1] the reverse.
DIRECTION_PREFIXES = ("fwd_", "bwd_")
# struct mld_flow_event (408 bytes) as the flow arrays of both capture engines hold it: the
# key's and the state's members by their own names, each direction's behind fwd_ / bwd_
# (fwd_packets, bwd_init_window), padding left out.
EVENT_DTYPE: np.dtype[np.void] = flat_dtype("mld_flow_event", {"dir": DIRECTION_PREFIXES})
