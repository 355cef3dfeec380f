"""Collects items into batches by count and age, and hands each full batch to a callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    """Flushes when ``max_items`` are held or the oldest has waited ``max_delay_s``.

    The owner calls ``add`` for each item and ``poll`` from its loop (or timer) so that a
    quiet period still sends what it holds; ``flush`` sends whatever is left (at shutdown).
    """

    def __init__(
        self,
        send: Callable[[list[T]], object],
        *,
        max_items: int,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._send = send
        self._max_items = max_items
        self._max_delay = max_delay_s
        self._clock = clock
        self._items: list[T] = []
        self._oldest = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        if not self._items:
            self._oldest = self._clock()
        self._items.append(item)
        if len(self._items) >= self._max_items:
            self.flush()

    def poll(self) -> None:
        """Flush if the oldest held item has waited too long."""
        if self._items and self._clock() - self._oldest >= self._max_delay:
            self.flush()

    def time_to_deadline(self) -> float | None:
        """Seconds until ``poll`` would flush, or None when empty (for a poll timeout)."""
        if not self._items:
            return None
        return max(0.0, self._oldest + self._max_delay - self._clock())

    def flush(self) -> None:
        if self._items:
            items, self._items = self._items, []
            self._send(items)
