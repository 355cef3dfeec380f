"""SIGTERM and Ctrl-C for the long-running commands, one way each.

* :func:`stop_on_signals`: the service finishes what it is doing and returns from its
  loop (``request_stop``); with ``second_sigint_interrupts`` a second Ctrl-C raises
  KeyboardInterrupt at once.
* :func:`raise_on_stop_signals`: SIGTERM and SIGINT raise :class:`StopRequested` in the
  main thread, for a loop that stops things itself in ``finally`` (``mld gateway``,
  ``mld lab dev``).
* :func:`sigterm_raises_systemexit`: SIGTERM raises ``SystemExit(143)`` (Ctrl-C stays
  KeyboardInterrupt), for a loop that flushes or detaches in ``finally`` and treats both
  alike (``mld sniffer run``, ``mld firewall run``, xdp.monitor). ``defer`` lets a caller note
  the signal instead when raising at that frame would be lost (inside a ctypes callback)
  and raise it itself later.

All install handlers, so call them from the main thread. Nothing else in the project
calls ``signal.signal`` for SIGTERM or SIGINT except to ignore them around a child.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

__all__ = [
    "StopRequested",
    "raise_on_stop_signals",
    "sigterm_raises_systemexit",
    "stop_on_signals",
]

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived; the message names it."""


def stop_on_signals(
    request_stop: Callable[[], None], doing: str, *, second_sigint_interrupts: bool = False
) -> None:
    """SIGTERM and SIGINT log ``<SIGNAL>: <doing>`` and call ``request_stop``."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: %s", signal.Signals(signum).name, doing)
        request_stop()
        if second_sigint_interrupts:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def raise_on_stop_signals() -> None:
    """SIGTERM and SIGINT raise :class:`StopRequested` (main thread)."""
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)


def sigterm_raises_systemexit(defer: Callable[[FrameType | None], bool] | None = None) -> None:
    """SIGTERM raises ``SystemExit(128 + SIGTERM)`` in the main thread, unless ``defer``
    (given the interrupted frame) returns True: then the caller raises it later."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if defer is not None and defer(frame):
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
