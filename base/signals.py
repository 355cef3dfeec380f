"""SIGTERM and Ctrl-C for the long-running commands, one way each.

* :func:`stop_on_signals`: the service finishes what it is doing and returns from its
  loop (``request_stop``); with ``second_sigint_interrupts`` a second Ctrl-C raises
  KeyboardInterrupt at once.
* :func:`raise_on_stop_signals`: SIGTERM and SIGINT raise :class:`StopRequested` in the
  main thread, for a loop that stops things itself in ``finally`` (``mld gateway``,
  ``mld lab dev``).

Both install handlers, so call them from the main thread.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

__all__ = ["StopRequested", "raise_on_stop_signals", "stop_on_signals"]

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
