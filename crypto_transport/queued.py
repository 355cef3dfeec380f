"""QueuedSender: an output that never holds up the thread that hands it batches.

A PUSH whose receiver stops reading waits ``transport.send_timeout_ms`` for room on every
batch. Sent from the thread that does the real work (the detector's scoring loop), that
wait holds up everything behind it: a RAG store that stalls would stall verdicts to the
firewall. A QueuedSender takes batches into a bounded queue and sends them (serialize, LZ4,
AEAD, ZeroMQ) from a thread of its own, which owns the wrapped sender's sockets:

* :meth:`send` never waits: a full queue drops the batch and counts its records under
  ``dropped_queue_full``;
* a batch the wrapped sender drops (its PUSH timeout) counts under ``dropped_send``;
* ``sent`` and ``pending`` (queued, or in the sending thread's hands) complete the
  account: every record handed over is in exactly one of them.

The wrapped sender is a crypto_transport Sender or anything with its ``send`` and
``close`` (control.DiscoveredSender: its ``update`` with the live receivers is handed to
the sending thread through :meth:`update`, applied before its next send, since a ZeroMQ
socket must only be used by one thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from google.protobuf.message import Message

from base.errors import ConfigError

__all__ = ["BatchSender", "QueuedSender"]

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.2  # how often an idle sending thread maintains its sender
_DROP_LOG_INTERVAL_S = 10.0


class BatchSender(Protocol):
    """What a QueuedSender needs of the sender it wraps."""

    @property
    def endpoint(self) -> str: ...

    def send(self, message: Any) -> bool: ...

    def send_payload(self, payload: bytes) -> bool: ...

    def close(self) -> None: ...


class QueuedSender:
    """Sends batches from a bounded queue on a thread of its own."""

    def __init__(
        self,
        sender: BatchSender,
        *,
        max_batches: int,
        what: str,
        size: Callable[[Any], int] = lambda _m: 1,
    ) -> None:
        """``max_batches``: batches waiting at most (ConfigError below 1). ``what`` names
        the output in logs and the thread; ``size(message)`` is the number of records a
        batch counts for (1 per batch by default)."""
        if max_batches < 1:
            raise ConfigError(f"the {what} send queue holds {max_batches} batches: give at least 1")
        self.inner = sender
        self.what = what
        self.max_batches = max_batches
        self._size = size
        # Counters owned by one thread each, summed by stats(): the caller's (queue full)
        # and the sending thread's (sent, dropped by the sender), so no update is lost.
        self._caller: Counter[str] = Counter()
        self._thread_counts: Counter[str] = Counter()
        self._queue: queue.Queue[tuple[Message | bytes, int]] = queue.Queue(maxsize=max_batches)
        self._peers_lock = threading.Lock()
        self._peers: list[Any] | None = None
        self._closing = threading.Event()
        self._abandon = threading.Event()
        self._next_log = 0.0
        self._thread = threading.Thread(target=self._run, name=f"{what}-out", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def send(self, message: Message | bytes, records: int | None = None) -> bool:
        """Queue ``message`` (never waits); False when the queue is full (counted).
        The message belongs to the sending thread from now on: do not change it. An
        already serialized batch (bytes) is sealed as it is; ``records`` is what it
        counts for (default: ``size(message)``)."""
        n = self._size(message) if records is None else records
        if self._closing.is_set():
            self._caller["dropped_closed"] += n
            return False
        self._caller["queued"] += n  # before the put: the thread may settle it at once
        try:
            self._queue.put_nowait((message, n))
        except queue.Full:
            self._caller["queued"] -= n
            self._caller["dropped_queue_full"] += n
            self._log_drop(f"the send queue ({self.max_batches} batches) is full")
            return False
        return True

    def update(self, instances: Iterable[Any]) -> None:
        """The live receivers (control-plane registrations) for a wrapped sender that
        follows them; applied by the sending thread before its next send."""
        with self._peers_lock:
            self._peers = list(instances)

    def stats(self) -> dict[str, int]:
        """Records sent, dropped (by reason and in all) and pending; ``queued_batches``
        is the queue's depth now."""
        caller, thread = self._caller, self._thread_counts
        sent = thread["sent"]
        dropped_send = thread["dropped_send"]
        dropped_full = caller["dropped_queue_full"]
        dropped_closed = caller["dropped_closed"] + thread["dropped_closed"]
        dropped = dropped_full + dropped_send + dropped_closed
        return {
            "sent": sent,
            "dropped": dropped,
            "dropped_queue_full": dropped_full,
            "dropped_send": dropped_send,
            "dropped_closed": dropped_closed,
            # Handed over and not settled yet (queued or being sent); never negative.
            "pending": max(0, caller["queued"] - sent - dropped_send - thread["dropped_closed"]),
            "queued_batches": self._queue.qsize(),
        }

    def _log_drop(self, why: str) -> None:
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + _DROP_LOG_INTERVAL_S
        s = self.stats()
        log.warning(
            "dropped %s to %s: %s (receiver not keeping up or not there); %d records dropped "
            "so far (queue full %d, send timeout %d)",
            self.what,
            self.endpoint,
            why,
            s["dropped"],
            s["dropped_queue_full"],
            s["dropped_send"],
        )

    def _take_peers(self) -> None:
        with self._peers_lock:
            peers, self._peers = self._peers, None
        update = getattr(self.inner, "update", None)
        if peers is not None and update is not None:
            update(peers)

    def _maintain(self) -> None:
        maintain = getattr(self.inner, "maintain", None)
        if maintain is not None:
            maintain()

    def _run(self) -> None:
        try:
            while not self._abandon.is_set():
                try:
                    message, n = self._queue.get(timeout=_IDLE_POLL_S)
                except queue.Empty:
                    if self._closing.is_set():
                        return
                    self._take_peers()
                    self._maintain()
                    continue
                self._take_peers()
                try:
                    if isinstance(message, bytes):
                        ok = self.inner.send_payload(message)
                    else:
                        ok = self.inner.send(message)
                except Exception as exc:  # a transport error must not end the thread
                    if not self._abandon.is_set():
                        log.error("sending %s to %s failed: %s", self.what, self.endpoint, exc)
                    ok = False
                if ok:
                    self._thread_counts["sent"] += n
                else:
                    self._thread_counts["dropped_send"] += n
                    self._log_drop("the send timed out")
        finally:
            self._settle_left()
            self.inner.close()

    def _settle_left(self) -> None:
        """Count what is still queued when the thread ends (abandoned at close)."""
        while True:
            try:
                _, n = self._queue.get_nowait()
            except queue.Empty:
                return
            self._thread_counts["dropped_closed"] += n

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is queued, waiting at most ``timeout_s``; what is left then is
        dropped and counted (``dropped_closed``), and the wrapped sender is closed by the
        sending thread as it ends (a send blocked on its socket ends when the ZeroMQ
        context is terminated)."""
        self._closing.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon.set()
            s = self.stats()
            log.warning(
                "%s to %s: %d records still queued after %.1f s at close, dropped",
                self.what,
                self.endpoint,
                s["pending"],
                timeout_s,
            )
