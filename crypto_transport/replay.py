"""Anti-replay window over 64-bit frame sequence numbers (the IPsec/DTLS sliding bitmap).

A sender numbers its frames upwards from the wall-clock nanoseconds at which it started, so a
restarted sender continues above its previous numbers and an old frame never looks new.
The window remembers the newest number accepted and which of the ``size`` numbers behind it
were seen: a number seen before is a replay, one older than the window is out of window, one
inside it not yet seen is accepted (ZeroMQ keeps order per connection, so that is rare).
"""

from __future__ import annotations

__all__ = ["ReplayWindow"]


class ReplayWindow:
    """Sliding window of accepted sequence numbers for one sender key."""

    __slots__ = ("_bits", "_mask", "newest", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self.size = size
        self._mask = (1 << size) - 1
        self.newest: int | None = None
        # Bit i set: sequence number (newest - i) was accepted.
        self._bits = 0

    def check(self, seq: int) -> str | None:
        """The reason ``seq`` would be refused ("replay" or "out_of_window"), or None."""
        newest = self.newest
        if newest is None or seq > newest:
            return None
        offset = newest - seq
        if offset >= self.size:
            return "out_of_window"
        if (self._bits >> offset) & 1:
            return "replay"
        return None

    def accept(self, seq: int) -> int:
        """Record ``seq`` (already checked and authenticated); returns how many numbers it
        skipped ahead of the newest one (frames this receiver never saw)."""
        newest = self.newest
        if newest is None:
            self.newest = seq
            self._bits = 1
            return 0
        if seq > newest:
            shift = seq - newest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.newest = seq
            return shift - 1
        self._bits |= 1 << (newest - seq)
        return 0
