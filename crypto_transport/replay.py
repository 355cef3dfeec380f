"""Anti-replay window over 64-bit frame sequence numbers (the IPsec/DTLS sliding bitmap).

A sender numbers its frames upwards from the wall-clock nanoseconds at which it started, so a
restarted sender continues above its previous numbers and an old frame never looks new.
The window remembers the newest number accepted and which of the ``size`` numbers behind it
were seen: a number seen before is a replay, one older than the window is out of window, one
inside it not yet seen is accepted (ZeroMQ keeps order per connection, so that is rare).

The newest number per key survives a receiver restart in a :class:`ReplayState` file
(``<node.state_dir>/transport/<owner>-<channel>.json``): a window restored from it refuses
everything at or below the stored number, so frames recorded before the restart (or years
before: frames from 2020 carry 2020's wall-clock numbers) are not accepted again. The file
is written atomically (temporary file, fsync, rename) at most once a second and at close;
a crash loses at most the last second's advances, so the frames accepted in that second
could be accepted once more after the crash, nothing older.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from base.errors import TransportError

__all__ = ["ReplayState", "ReplayWindow", "replay_state_path"]

log = logging.getLogger(__name__)

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")
# Largest state file read back (a few hundred keys need a few tens of KiB).
_MAX_STATE_BYTES = 4 * 1024 * 1024


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

    @classmethod
    def restored(cls, size: int, newest: int) -> ReplayWindow:
        """A window that has seen every number up to ``newest`` (from a ReplayState)."""
        window = cls(size)
        window.newest = newest
        window._bits = window._mask
        return window

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


def replay_state_path(state_dir: str | Path, owner: str, channel: str) -> Path:
    """Where the receiver of ``channel`` run by ``owner`` (component-instance) keeps the
    newest sequence number per key."""
    name = _NAME_OK.sub("_", f"{owner}-{channel}")
    return Path(state_dir) / "transport" / f"{name}.json"


class ReplayState:
    """The newest accepted sequence number per key id of one receiver, on disk."""

    def __init__(
        self,
        path: str | Path,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._interval = interval_s
        self._clock = clock
        self._last_save = -float("inf")
        self.saves = 0

    def load(self) -> dict[bytes, int]:
        """The stored numbers; {} when there is no file yet. A file that cannot be read
        or parsed is a TransportError: starting without it would accept old frames."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TransportError(
                f"cannot read the replay state {self.path}: {exc.strerror}; fix its "
                "permissions (the receiver would otherwise accept recorded frames again)"
            ) from exc
        try:
            if len(raw) > _MAX_STATE_BYTES:
                raise ValueError(f"larger than {_MAX_STATE_BYTES} bytes")
            data = json.loads(raw)
            newest = data["newest"]
            out = {bytes.fromhex(k): int(v) for k, v in newest.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransportError(
                f"replay state {self.path} is damaged ({exc}); delete it to start afresh "
                "(frames recorded before this restart may then be accepted once)"
            ) from None
        return out

    def maybe_save(self, newest: Mapping[bytes, int]) -> bool:
        """Save if the last save is at least ``interval_s`` old; True if it saved."""
        if self._clock() - self._last_save < self._interval:
            return False
        self.save(newest)
        return True

    def save(self, newest: Mapping[bytes, int]) -> None:
        """Write the numbers atomically (a reader sees the old file or the new one)."""
        self._last_save = self._clock()
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps({"newest": {k.hex(): v for k, v in sorted(newest.items())}})
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.saves += 1
