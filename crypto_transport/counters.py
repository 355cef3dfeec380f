"""Per-reason counters of a channel and rejection logging that cannot flood the log."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["ChannelCounters", "RejectLog"]

# Reasons a receiver refuses a frame; each is a counter (and a metric label later).
REJECT_REASONS = (
    "truncated",
    "bad_version",
    "unknown_key",
    "expired_key",
    "bad_tag",
    "replay",
    "out_of_window",
    "decompression_bomb",
    "bad_compression",
    "bad_protobuf",
    "unauthorized_role",
)


class ChannelCounters:
    """Cumulative counts of one channel: frames sent, received, dropped and rejected."""

    def __init__(self) -> None:
        self.sent = 0
        self.sent_bytes = 0
        self.received = 0
        self.received_bytes = 0
        # Frames the sender gave up on, by reason ("timeout": PUSH found no room within
        # send_timeout_ms; a PUB drops for a full subscriber only, which counts "missing").
        self.dropped: Counter[str] = Counter()
        # Frames the receiver refused, by reason (REJECT_REASONS).
        self.rejected: Counter[str] = Counter()
        # Sequence numbers skipped by accepted frames: frames this receiver never got.
        self.missing = 0
        # Connections refused by CURVE authentication (unknown key, or a role that may not
        # use this endpoint); a refused client retries, each attempt counts.
        self.refused_connections = 0
        # Failed writes of the receiver's replay state file.
        self.replay_state_errors = 0

    def snapshot(self) -> dict[str, int]:
        """Flat ``name -> value`` view, e.g. for a Heartbeat's counters map."""
        out = {
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "received": self.received,
            "received_bytes": self.received_bytes,
            "missing": self.missing,
            "replay_state_errors": self.replay_state_errors,
            "refused_connections": self.refused_connections,
        }
        out.update({f"dropped.{k}": v for k, v in sorted(self.dropped.items())})
        out.update({f"rejected.{k}": v for k, v in sorted(self.rejected.items())})
        return out


class RejectLog:
    """Logs a rejection at most once per (peer, reason) per interval, with a count of the
    ones held back since the last line."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._max_keys = max_keys
        # (peer, reason) -> [time of last line, rejections held back since]
        self._state: dict[tuple[str, str], list[float]] = {}

    def __call__(self, channel: str, peer: str, reason: str, detail: str) -> bool:
        """Log the rejection if its (peer, reason) has been quiet long enough; True if logged."""
        now = self._clock()
        key = (peer, reason)
        state = self._state.get(key)
        if state is not None and now - state[0] < self._interval:
            state[1] += 1
            return False
        held = int(state[1]) if state is not None else 0
        if state is None and len(self._state) >= self._max_keys:
            # Many distinct peers (a scan of the port): forget the oldest to stay bounded.
            del self._state[next(iter(self._state))]
        self._state[key] = [now, 0]
        more = f" ({held} more since the last report)" if held else ""
        self._log.warning("%s: rejected frame from %s: %s%s", channel, peer, detail, more)
        return True
