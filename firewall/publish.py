"""The firewall agent's decisions, published to the RAG store (channel ``blocks``).

Every decision the agent records in its decision log (blocks, extensions, unblocks,
expiries, refusals: allowlisted, rate-limited, table full, rejected) is also sent, as a
``BlockDecision`` in a ``DecisionBatch``, over the encrypted transport to the RAG store,
which keeps them beside the flows with the verdict ids they came from. ``already_blocked``
skips (one per verdict about an address already blocked, thousands in a flood) and
``below_threshold`` ones are not sent: they decide nothing.

Sending never holds up blocking: the agent hands each turn's decisions to a bounded queue
and a thread of its own sends them (a PUSH whose receiver is gone waits up to
``transport.send_timeout_ms`` per batch). A full queue drops the batch and counts it
(``blocks_out.dropped``); the decision log keeps every decision anyway.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from firewall.policy import Decision
from proto.events_pb2 import BlockDecision, DecisionBatch

__all__ = ["DecisionPublisher", "to_block_decision"]

log = logging.getLogger(__name__)

_ACTIONS = {
    "block": BlockDecision.ACTION_BLOCK,
    "extend": BlockDecision.ACTION_EXTEND,
    "unblock": BlockDecision.ACTION_UNBLOCK,
    "skip": BlockDecision.ACTION_SKIP,
    "reject": BlockDecision.ACTION_SKIP,
}
_OUTCOMES = {
    "applied": BlockDecision.OUTCOME_APPLIED,
    "dry_run": BlockDecision.OUTCOME_DRY_RUN,
    "allowlisted": BlockDecision.OUTCOME_ALLOWLISTED,
    "rate_limited": BlockDecision.OUTCOME_RATE_LIMITED,
    "failed": BlockDecision.OUTCOME_FAILED,
    "table_full": BlockDecision.OUTCOME_TABLE_FULL,
    "rejected": BlockDecision.OUTCOME_REJECTED,
}
_BACKENDS = {
    "xdp": BlockDecision.BACKEND_XDP,
    "nftables": BlockDecision.BACKEND_NFTABLES,
    "none": BlockDecision.BACKEND_NONE,
}
# Outcomes not published (see the module docstring).
NOT_PUBLISHED = ("below_threshold", "already_blocked")


class BatchSender(Protocol):
    """What the publisher needs of a crypto_transport Sender (or a DiscoveredSender)."""

    def send(self, message: DecisionBatch) -> bool: ...

    def close(self) -> None: ...


def to_block_decision(
    decision: Decision, outcome: str, *, agent_id: str, seq: int, backend: str
) -> BlockDecision:
    """The wire form of one recorded decision."""
    try:
        raw = ipaddress.ip_address(decision.addr).packed
    except ValueError:
        raw = b""  # a rejected verdict's bad address: the reason says what it was
    return BlockDecision(
        decision_id=f"{agent_id}:{seq}",
        agent_id=agent_id,
        decided_ts_ns=int(decision.decided_ts * 1e9),
        action=_ACTIONS.get(decision.action, BlockDecision.ACTION_UNSPECIFIED),
        addr=raw,
        prefix_len=decision.prefix_len,
        ttl_s=decision.ttl_s,
        expires_ts_ns=int(decision.expires_ts * 1e9),
        reason=decision.reason,
        family=decision.family,
        final_score=decision.final_score,
        verdict_ids=list(decision.verdict_ids),
        backend=_BACKENDS.get(backend, BlockDecision.BACKEND_UNSPECIFIED),
        outcome=_OUTCOMES.get(outcome, BlockDecision.OUTCOME_UNSPECIFIED),
    )


# Seconds a batch that could not be handed over is tried again before it counts as dropped.
RETRY_S = 30.0


class DecisionPublisher:
    """Collects a turn's decisions and sends them from its own thread."""

    def __init__(self, sender: BatchSender, agent_id: str, queue_batches: int = 256) -> None:
        self.agent_id = agent_id
        self.counters: Counter[str] = Counter()
        self._sender = sender
        self._pending: list[BlockDecision] = []
        self._seq = 0
        self._batch_seq = 0
        self._queue: queue.Queue[DecisionBatch | None] = queue.Queue(maxsize=queue_batches)
        # Live RAG stores from the control plane, for a sender that follows them
        # (control.DiscoveredSender); applied by the sending thread, which owns the sockets.
        self._peers_lock = threading.Lock()
        self._peers: list[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="blocks-out", daemon=True)
        self._thread.start()

    def add(self, decision: Decision, outcome: str, backend: str) -> None:
        if outcome in NOT_PUBLISHED:
            return
        self._seq += 1
        self._pending.append(
            to_block_decision(
                decision, outcome, agent_id=self.agent_id, seq=self._seq, backend=backend
            )
        )

    def flush(self) -> None:
        """Hand the decisions collected since the last flush to the sending thread."""
        if not self._pending:
            return
        self._batch_seq += 1
        batch = DecisionBatch(
            agent_id=self.agent_id, batch_seq=self._batch_seq, decisions=self._pending
        )
        n = len(self._pending)
        self._pending = []
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.counters["dropped"] += n
            log.warning("%d decision(s) not sent to the RAG store: the send queue is full", n)

    def follow(self, registrations: Iterable[Any]) -> None:
        """The live RAG stores (control plane registrations), for a sender that follows
        them; taken up by the sending thread before its next send."""
        with self._peers_lock:
            self._peers = list(registrations)

    def _take_peers(self) -> None:
        with self._peers_lock:
            peers, self._peers = self._peers, None
        update = getattr(self._sender, "update", None)
        if peers is not None and update is not None:
            update(peers)

    def _run(self) -> None:
        # A batch the sender could not hand over (no live store yet, or its connection was
        # refused while the store had not yet learnt this agent's key from etcd) is tried
        # again every turn for RETRY_S, then counted as dropped.
        held: DecisionBatch | None = None
        held_since = 0.0
        while True:
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                batch = held  # try the held batch again, if there is one
            else:
                if held is not None:  # a newer batch (or the end) replaces it
                    self.counters["dropped"] += len(held.decisions)
                    held = None
                if batch is None:
                    return
            self._take_peers()
            self._maintain()
            if batch is None:
                continue
            try:
                ok = self._sender.send(batch)
            except Exception as exc:  # a transport error must not end the thread
                log.error("sending decisions to the RAG store failed: %s", exc)
                ok = False
            if ok:
                self.counters["sent"] += len(batch.decisions)
                held = None
            elif held is None:
                held, held_since = batch, time.monotonic()
            elif time.monotonic() - held_since > RETRY_S:
                self.counters["dropped"] += len(batch.decisions)
                held = None

    def _maintain(self) -> None:
        maintain = getattr(self._sender, "maintain", None)
        if maintain is not None:
            maintain()

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then close the sender."""
        self.flush()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._sender.close()
