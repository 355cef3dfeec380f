"""Sliding windows over whole batches of records, in native code: the batch twin of
``sliding_window.SlidingWindows``.

``native._flowengine.Windows`` (native/windows.c) keeps the same per-key windows entry for
entry (record time, running sums, distinct counts, the same three caps and LRU eviction)
and takes a batch of n entries in one call, giving each entry's window as it was right
after that entry was added: its entry count, its sums and its distinct counts. The source
context and the fast rules use it, so no Python runs per flow; ``SlidingWindows`` stays
the readable definition and tests/sniffer/test_batch_windows.py checks that both agree.

Keys and distinct values are fixed-size byte rows: :func:`address_keys` packs an address
(4 or 16 bytes) as its length and 16 bytes, :func:`int_values` packs integers.

:class:`RuleWindows` (``native._flowengine.RuleWindows``, native/fastwin.c) is the batch
twin of the fast rules' failure windows (port_scan, host_sweep) and rhythm windows
(beacon), ``FastRules._failures`` and ``FastRules._rhythm`` in sniffer/fast_rules.py,
which stay their definition (tests/sniffer/test_rule_windows.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from native._flowengine import RuleWindows as _RuleWindows
from native._flowengine import Windows, pack_addresses

__all__ = [
    "ADDRESS_KEY_SIZE",
    "BatchWindows",
    "RuleWindows",
    "WindowState",
    "address_keys",
    "int_values",
]

ADDRESS_KEY_SIZE = 17

U8 = npt.NDArray[np.uint8]


def address_keys(addrs: list[bytes]) -> U8:
    """(n, 17) rows: each address's length, then its bytes zero-padded to 16."""
    out = np.empty((len(addrs), ADDRESS_KEY_SIZE), dtype=np.uint8)
    pack_addresses(addrs if isinstance(addrs, list) else list(addrs), out)
    return out


def int_values(values: npt.ArrayLike, width: int = ADDRESS_KEY_SIZE) -> U8:
    """(n, width) rows holding each integer's 8 little-endian bytes, zero-padded."""
    ints = np.ascontiguousarray(values, dtype="<i8")
    out = np.zeros((len(ints), width), dtype=np.uint8)
    out[:, :8] = ints.view(np.uint8).reshape(len(ints), 8)
    return out


@dataclass(frozen=True)
class WindowState:
    """Each entry's window right after it was added (0 for rows not selected)."""

    count: npt.NDArray[np.int64]
    sums: npt.NDArray[np.float64]  # (n, n_sums)
    distinct: npt.NDArray[np.int64]  # (n, n_distinct)


class BatchWindows:
    """Per-key sliding windows fed a batch at a time (see the module docstring)."""

    def __init__(
        self,
        *,
        window_s: float,
        n_sums: int,
        n_distinct: int,
        max_keys: int,
        max_entries_per_key: int,
        max_entries: int,
        key_size: int = ADDRESS_KEY_SIZE,
        value_size: int = ADDRESS_KEY_SIZE,
    ) -> None:
        if window_s <= 0 or max_keys < 1 or max_entries_per_key < 1 or max_entries < 1:
            raise ValueError("window_s and every cap must be positive")
        self.window_s = window_s
        self.n_sums = n_sums
        self.n_distinct = n_distinct
        self.key_size = key_size
        self.value_size = value_size
        self._windows = Windows(
            int(window_s * 1e9),
            n_sums,
            n_distinct,
            key_size,
            value_size,
            max_keys,
            max_entries_per_key,
            max_entries,
        )

    def add(
        self,
        keys: U8,
        ts_ns: npt.ArrayLike,
        sums: npt.ArrayLike | None = None,
        values: U8 | None = None,
        counted: npt.ArrayLike | None = None,
        select: npt.ArrayLike | None = None,
    ) -> WindowState:
        """Add entry i (key ``keys[i]``, time ``ts_ns[i]``, sums ``sums[i]``, distinct values
        ``values[i, d]``) for each selected i, in order. ``counted[i, d]`` false leaves a
        value out of its distinct count; ``select`` false skips the row."""
        n = len(keys)
        keys = np.ascontiguousarray(keys, dtype=np.uint8)
        ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
        s = np.zeros((n, self.n_sums)) if sums is None else np.asarray(sums, np.float64)
        s = np.ascontiguousarray(s.reshape(n, self.n_sums))
        shape = (n, self.n_distinct, self.value_size)
        v = np.zeros(shape, np.uint8) if values is None else np.ascontiguousarray(values, np.uint8)
        c = np.ones((n, self.n_distinct), np.uint8) if counted is None else counted
        c = np.ascontiguousarray(c, dtype=np.uint8)
        sel = np.ones(n, np.uint8) if select is None else np.ascontiguousarray(select, np.uint8)
        state = WindowState(
            np.zeros(n, np.int64),
            np.zeros((n, self.n_sums)),
            np.zeros((n, self.n_distinct), np.int64),
        )
        self._windows.add(n, keys, ts, s, v, c, sel, state.count, state.sums, state.distinct)
        return state

    def _stats(self) -> dict[str, int]:
        return self._windows.stats()

    def __len__(self) -> int:
        return self._stats()["keys"]

    @property
    def entries(self) -> int:
        """Entries held over all keys."""
        return self._stats()["entries"]

    @property
    def evicted_keys(self) -> int:
        return self._stats()["evicted_keys"]

    @property
    def evicted_entries(self) -> int:
        return self._stats()["evicted_entries"]


I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class RuleWindows:
    """The fast rules' failure and rhythm windows, fed a batch at a time (module docstring).

    Every piece of state the Python definition keeps (failing sources, pending first
    failures, pair and port windows, last connection starts, beacon windows) lives in
    native code, with the same caps, and the same order of adds, pops and evictions."""

    def __init__(
        self,
        *,
        window_s: float,
        max_keys: int,
        max_entries_per_key: int,
        max_entries: int,
        beacon_window_s: float,
        beacon_max_connections: int,
    ) -> None:
        self._w = _RuleWindows(
            int(window_s * 1e9),
            max_keys,
            max_entries_per_key,
            max_entries,
            int(beacon_window_s * 1e9),
            beacon_max_connections,
        )

    def failures(
        self, src: U8, dst: U8, dst_port: I64, sweep_port: I64, ts: I64, failed: npt.ArrayLike
    ) -> tuple[F64, F64, F64]:
        """Per record (in order): distinct failed ports at its (source, destination),
        distinct failed destinations and the failed share at its (source, sweep port)."""
        n = len(src)
        out = np.zeros((3, n))
        self._w.failures(
            n,
            np.ascontiguousarray(src, np.uint8),
            np.ascontiguousarray(dst, np.uint8),
            np.ascontiguousarray(dst_port, np.int64),
            np.ascontiguousarray(sweep_port, np.int64),
            np.ascontiguousarray(ts, np.int64),
            np.ascontiguousarray(failed, np.uint8),
            out[0],
            out[1],
            out[2],
        )
        return out[0], out[1], out[2]

    def rhythm(
        self,
        src: U8,
        dst: U8,
        dst_port: I64,
        protocol: I64,
        start: I64,
        size: npt.ArrayLike,
        scored: npt.ArrayLike,
        min_period_s: float,
        min_connections: float,
    ) -> tuple[F64, F64, F64]:
        """Per record: connections of its (source, destination, port, protocol) in the
        beacon window, the regularity of the gaps between their starts and that of their
        sizes (past ``min_connections`` connections, else 0)."""
        n = len(src)
        out = np.zeros((3, n))
        self._w.rhythm(
            n,
            np.ascontiguousarray(src, np.uint8),
            np.ascontiguousarray(dst, np.uint8),
            np.ascontiguousarray(dst_port, np.int64),
            np.ascontiguousarray(protocol, np.int64),
            np.ascontiguousarray(start, np.int64),
            np.ascontiguousarray(size, np.float64),
            np.ascontiguousarray(scored, np.uint8),
            float(min_period_s),
            float(min_connections),
            out[0],
            out[1],
            out[2],
        )
        return out[0], out[1], out[2]

    def reset_beacons(self, beacon_window_s: float, beacon_max_connections: int) -> None:
        """Start the rhythm windows afresh (a new window length or depth); the last
        starts are kept."""
        self._w.reset_beacons(int(beacon_window_s * 1e9), beacon_max_connections)

    def stats(self) -> dict[str, int]:
        """Sizes: failing_sources, pending, last_starts and *_keys/*_entries of pairs,
        ports and beacons."""
        return self._w.stats()


class RuleWindowsPart:
    """One part of a :class:`RuleWindows` seen as a sized container (``len`` and, for a
    window set, ``entries``), for the memory-bound checks that read the Python one."""

    def __init__(self, windows: RuleWindows, name: str) -> None:
        self._windows = windows
        self._name = name

    def __len__(self) -> int:
        stats = self._windows.stats()
        return stats.get(self._name, stats.get(f"{self._name}_keys", 0))

    @property
    def entries(self) -> int:
        return self._windows.stats()[f"{self._name}_entries"]
