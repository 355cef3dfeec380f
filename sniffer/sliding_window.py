"""Per-key sliding windows over flow records: running sums and distinct-value counts.

Time is the records' own (``last_ts_ns``), never the wall clock, so a capture replayed
offline and the same traffic seen live give the same numbers. Each key (a source address,
a destination, ...) holds the entries of its last ``window_ns``; adding an entry first
drops the key's entries older than ``newest - window_ns``. Sums and distinct counts are
kept up to date on insert and on eviction, so an update costs O(1) amortised.

Memory is bounded three ways, each evicting the oldest:
* ``max_entries_per_key``: a key's oldest entries go first (its counts become lower
  bounds, which only makes a heavy hitter look lighter than it is);
* ``max_keys``: the key updated least recently is forgotten whole;
* ``max_entries``: the same, until the total is under the cap.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["KeyWindow", "SlidingWindows"]


@dataclass
class KeyWindow:
    """The window of one key: its entries, their sums and distinct values."""

    n_sums: int
    n_distinct: int
    entries: deque[tuple[int, tuple[float, ...], tuple[Hashable, ...]]] = field(
        default_factory=deque
    )
    sums: list[float] = field(default_factory=list)
    distinct: list[Counter[Hashable]] = field(default_factory=list)
    newest_ns: int = 0

    def __post_init__(self) -> None:
        self.sums = [0.0] * self.n_sums
        self.distinct = [Counter() for _ in range(self.n_distinct)]

    @property
    def count(self) -> int:
        """Entries in the window."""
        return len(self.entries)

    def distinct_count(self, i: int) -> int:
        """Distinct values of the ``i``-th distinct dimension in the window."""
        return len(self.distinct[i])

    def _push(self, ts_ns: int, sums: tuple[float, ...], values: tuple[Hashable, ...]) -> None:
        self.entries.append((ts_ns, sums, values))
        for i, v in enumerate(sums):
            self.sums[i] += v
        for counter, value in zip(self.distinct, values, strict=True):
            counter[value] += 1
        self.newest_ns = max(self.newest_ns, ts_ns)

    def _pop_oldest(self) -> None:
        _, sums, values = self.entries.popleft()
        for i, v in enumerate(sums):
            self.sums[i] -= v
        for counter, value in zip(self.distinct, values, strict=True):
            left = counter[value] - 1
            if left:
                counter[value] = left
            else:
                del counter[value]
        if not self.entries:
            # Start again from exact zeros instead of accumulated rounding.
            self.sums = [0.0] * self.n_sums


class SlidingWindows:
    """Sliding windows for many keys, bounded in keys and entries."""

    def __init__(
        self,
        *,
        window_s: float,
        n_sums: int,
        n_distinct: int,
        max_keys: int,
        max_entries_per_key: int,
        max_entries: int,
    ) -> None:
        if window_s <= 0 or max_keys < 1 or max_entries_per_key < 1 or max_entries < 1:
            raise ValueError("window_s and every cap must be positive")
        self.window_s = window_s
        self._window_ns = int(window_s * 1e9)
        self._n_sums = n_sums
        self._n_distinct = n_distinct
        self._max_keys = max_keys
        self._max_per_key = max_entries_per_key
        self._max_entries = max_entries
        self._keys: OrderedDict[Hashable, KeyWindow] = OrderedDict()
        self._total = 0
        self.evicted_keys = 0
        self.evicted_entries = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    @property
    def entries(self) -> int:
        """Entries held over all keys."""
        return self._total

    def add(
        self,
        key: Hashable,
        ts_ns: int,
        sums: tuple[float, ...] = (),
        values: tuple[Hashable, ...] = (),
    ) -> KeyWindow:
        """Add one entry to ``key``'s window and return the window, expired entries gone."""
        win = self._keys.get(key)
        if win is None:
            win = self._keys[key] = KeyWindow(self._n_sums, self._n_distinct)
        else:
            self._keys.move_to_end(key)
        win._push(ts_ns, sums, values)
        self._total += 1
        horizon = win.newest_ns - self._window_ns
        entries = win.entries
        while entries and (entries[0][0] < horizon or len(entries) > self._max_per_key):
            if entries[0][0] >= horizon:
                self.evicted_entries += 1
            win._pop_oldest()
            self._total -= 1
        while len(self._keys) > self._max_keys or self._total > self._max_entries:
            if not self._forget_oldest_key(keep=key):
                break
        return win

    def peek(self, key: Hashable, ts_ns: int | None) -> KeyWindow | None:
        """``key``'s window without adding to it (None when the key is not held). With
        ``ts_ns``, entries older than ``ts_ns - window`` are dropped first (as an ``add``
        at that time would); the key's recency is not changed."""
        win = self._keys.get(key)
        if win is None or ts_ns is None:
            return win
        horizon = max(win.newest_ns, ts_ns) - self._window_ns
        while win.entries and win.entries[0][0] < horizon:
            win._pop_oldest()
            self._total -= 1
        return win

    def _forget_oldest_key(self, keep: Hashable) -> bool:
        oldest = next(iter(self._keys))
        if oldest == keep:
            return False
        self._total -= self._keys.pop(oldest).count
        self.evicted_keys += 1
        return True
