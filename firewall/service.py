"""The firewall agent's loop: verdicts in, decisions applied and logged, blocks expired.

One thread. Each turn waits up to 50 ms for a VerdictBatch (crypto_transport Receiver),
hands every verdict to the policy, applies the decisions that act (block, extend,
unblock) through the backend and records every decision in the SQLite log; answers the
local control socket (``mld firewall list/unblock/flush/status``); and every
``expiry_interval_s`` asks the policy for blocks past their TTL and removes them.

At start, blocks still within their TTL are read back from the decision log and applied
again (the nftables table was removed when the agent stopped; the XDP map kept them,
and adding them again is harmless); expired ones are not.

The control socket is a ZeroMQ REP socket on ``ipc://<state_dir>/firewall/control.sock``
(mode 0600: root only). A request is one JSON object ``{"cmd": "list" | "unblock" |
"flush" | "status", "addr": ...}``; the reply is ``{"ok": true, ...}`` or ``{"ok": false,
"error": ...}``.

Control plane (control/, when ``control.endpoints`` is set): :meth:`attach_control`
(control.FollowsControl) hands the agent a ``ServiceControl``; each turn polls it (it
never blocks) and a new state's ``firewall`` settings go to ``Policy.reconfigure``
(thresholds, TTLs, allowlist, new-block rate: ``policy.LIVE_SETTINGS``), keeping the
active blocks; the unblocks of blocks the new allowlist covers are applied and logged
like any other. :meth:`health` gives the control
thread the counters it writes to etcd.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from base.errors import ConfigError
from control import ControlState, FollowsControl, stats_from_other_thread
from crypto_transport import Receiver
from detector.eve import EveWriter, eve_drop
from firewall.backends import Backend
from firewall.config import FirewallConfig
from firewall.decision_log import Backend as BackendName
from firewall.decision_log import DecisionLog
from firewall.policy import ActiveBlock, Decision, Policy
from firewall.publish import DecisionPublisher
from proto.events_pb2 import VerdictBatch

__all__ = ["FirewallAgent", "block_to_json"]

log = logging.getLogger(__name__)

# Outcomes of a block the policy refused; the agent warns about them at most this often.
REFUSALS = ("table_full", "rate_limited")
REFUSAL_WARNING_S = 10.0
# Unverified skips (the source never completed a handshake) written to the decision log
# per second at most; the rest are counted (a forged flood must not become a flood of log
# rows). The warning about them names the victims they were aimed at.
UNVERIFIED_LOG_PER_S = 10

_POLL_MS = 50
# How often the decision log is pruned (firewall.decision_log_days), in seconds.
_PRUNE_INTERVAL_S = 3600.0


def block_to_json(block: ActiveBlock, now: float) -> dict[str, Any]:
    return {
        "address": block.network,
        "reason": block.reason,
        "family": block.family,
        "final_score": round(block.final_score, 4),
        "verdict_ids": list(block.verdict_ids),
        "since": block.since,
        "expires": block.expires_ts,
        "expires_in_s": max(0, round(block.expires_ts - now)),
    }


class FirewallAgent(FollowsControl):
    """Applies the policy's decisions through one backend and keeps the decision log."""

    def __init__(
        self,
        config: FirewallConfig,
        policy: Policy,
        backend: Backend,
        decisions: DecisionLog,
        receiver: Receiver[VerdictBatch] | None,
        control_path: Path | None,
        *,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], float] = time.time,
        eve: EveWriter | None = None,
        agent_id: str = "",
        publisher: DecisionPublisher | None = None,
    ) -> None:
        self.config = config
        # firewall.blocks: every recorded decision, to the RAG store (firewall/publish.py).
        self.publisher = publisher
        # firewall.eve_log: a Suricata EVE drop event per block, extension and unblock.
        self.eve = eve
        self.agent_id = agent_id
        self.policy = policy
        self.backend = backend
        self.decisions = decisions
        self.receiver = receiver
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._backend_name: BackendName = (
            "xdp" if backend.name == "xdp" else "nftables" if backend.name == "nftables" else "none"
        )
        self._stop = False
        self._next_expiry = 0.0
        # The decision log is pruned at the first step, then every _PRUNE_INTERVAL_S.
        self._next_prune = 0.0
        # New blocks the policy refused (table_full, rate_limited) since the last warning.
        self._refused: Counter[str] = Counter()
        self._next_refusal_warning = 0.0
        self._unverified = 0  # skipped since the last warning
        self._next_unverified_warning = 0.0
        self._unverified_logged: tuple[int, int] = (0, 0)  # (second, rows written in it)
        self._context = context or zmq.Context.instance()
        self._control: zmq.Socket[bytes] | None = None
        self.control_path = control_path
        if control_path is not None:
            control_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            control_path.unlink(missing_ok=True)
            sock: zmq.Socket[bytes] = self._context.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"ipc://{control_path}")
            os.chmod(control_path, 0o600)
            self._control = sock

    # ---- decisions -------------------------------------------------------------------

    def apply(self, decision: Decision) -> str:
        """Carry out one decision (if it acts) and log it; returns the final outcome."""
        outcome: str = decision.outcome
        if decision.acts:
            try:
                if decision.action in ("block", "extend"):
                    self.backend.block(decision.addr, decision.prefix_len, decision.ttl_s)
                else:
                    self.backend.unblock(decision.addr, decision.prefix_len)
                outcome = "applied"
            except Exception as exc:  # the backend's errors: logged, counted, not fatal
                outcome = "failed"
                log.error(
                    "%s %s failed on %s: %s",
                    decision.action,
                    decision.network,
                    self.backend.name,
                    exc,
                )
        self._record(decision, outcome)
        return outcome

    def _record(self, decision: Decision, outcome: str) -> None:
        self.counters[f"{decision.action}.{outcome}"] += 1
        if outcome == "unverified":
            self._note_unverified(decision)
        elif outcome != "below_threshold":
            self.decisions.record(decision, self._backend_name, outcome)
            if self.publisher is not None:
                self.publisher.add(decision, outcome, self._backend_name)
        if decision.action in ("block", "extend", "unblock") and outcome in ("applied", "dry_run"):
            log.info("%s %s (%s): %s", decision.action, decision.network, outcome, decision.reason)
            if self.eve is not None:
                event = eve_drop(
                    action=decision.action,
                    network=decision.network,
                    family=decision.family,
                    reason=decision.reason
                    if outcome == "applied"
                    else f"{decision.reason} (dry run)",
                    agent_id=self.agent_id,
                    ts=decision.decided_ts,
                )
                self.eve.write_events([event])
        elif outcome in REFUSALS:
            self._warn_refused(decision, outcome)

    def _note_unverified(self, decision: Decision) -> None:
        """A verdict not acted on because its source may be forged: into the decision log
        (at most UNVERIFIED_LOG_PER_S rows a second, the rest counted), and a warning at
        once, then at most every REFUSAL_WARNING_S, naming the victims."""
        second = int(time.monotonic())
        start, rows = self._unverified_logged
        rows = rows if start == second else 0
        if rows < UNVERIFIED_LOG_PER_S:
            self.decisions.record(decision, self._backend_name, "unverified")
            self._unverified_logged = (second, rows + 1)
        else:
            self.counters["unverified.not_logged"] += 1
        self._unverified += 1
        now = time.monotonic()
        if now < self._next_unverified_warning:
            return
        victims = ", ".join(f"{addr} ({n})" for addr, n in self.policy.unverified_victims(5))
        log.warning(
            "%d verdict(s) not blocked since the last warning: the source never completed a "
            "handshake, it may be forged (firewall.block_unverified is off); latest %s: %s; "
            "most hit destinations: %s",
            self._unverified,
            decision.network,
            decision.reason,
            victims,
        )
        self._unverified = 0
        self._next_unverified_warning = now + REFUSAL_WARNING_S

    def _warn_refused(self, decision: Decision, outcome: str) -> None:
        """Say that new blocks are being refused: at once, then at most every
        REFUSAL_WARNING_S with the counts since (a verdict storm must not flood the log)."""
        self._refused[outcome] += 1
        now = time.monotonic()
        if now < self._next_refusal_warning:
            return
        counts = ", ".join(f"{n} {why}" for why, n in sorted(self._refused.items()))
        log.warning(
            "new blocks refused (%s) since the last warning; latest %s: %s",
            counts,
            decision.network,
            decision.reason,
        )
        self._refused.clear()
        self._next_refusal_warning = now + REFUSAL_WARNING_S

    def handle_batch(self, batch: VerdictBatch) -> None:
        """Decide on every verdict of a batch; blocks go to the backend in one call when it
        takes many at once (nftables: one transaction instead of one nft run each)."""
        self.counters["batches"] += 1
        decisions = [self.policy.decide(v) for v in batch.verdicts]
        many = getattr(self.backend, "block_many", None)
        blocks = [d for d in decisions if d.acts and d.action in ("block", "extend")]
        if many is None or len(blocks) < 2:
            for d in decisions:
                self.apply(d)
            return
        try:
            many([(d.addr, d.prefix_len, d.ttl_s) for d in blocks])
        except Exception as exc:  # some or all failed: apply one by one to tell which
            log.warning(
                "batch of %d blocks failed on %s (%s); applying one by one",
                len(blocks),
                self.backend.name,
                exc,
            )
            blocks = []
        batched = {id(d) for d in blocks}
        for d in decisions:
            if id(d) in batched:
                self._record(d, "applied")
            else:
                self.apply(d)

    def expire(self) -> None:
        for decision in self.policy.expire(self.clock()):
            self.apply(decision)

    def restore(self) -> int:
        """Take back the blocks still within their TTL from the log and apply them again."""
        now = self.clock()
        live = self.decisions.live_blocks(now, include_dry_run=self.config.dry_run)
        for rejected in self.policy.restore(live):
            self.apply(rejected)
        restored = 0
        for block in self.policy.active():
            remaining = int(block.expires_ts - now)
            if remaining <= 0:
                continue
            try:
                self.backend.block(block.addr, block.prefix_len, remaining)
                restored += 1
            except Exception as exc:
                log.error("restoring %s failed on %s: %s", block.network, self.backend.name, exc)
        self.counters["restored"] += restored
        if restored:
            log.info("restored %d block(s) still within their TTL from the decision log", restored)
        return restored

    # ---- control ---------------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        now = self.clock()
        if cmd == "list":
            blocks = sorted(self.policy.active(), key=lambda b: b.since)
            return {
                "ok": True,
                "backend": self.backend.name,
                "blocks": [block_to_json(b, now) for b in blocks],
            }
        if cmd == "unblock":
            addr = str(request.get("addr", ""))
            try:
                ipaddress.ip_network(addr, strict=False)
            except ValueError:
                return {"ok": False, "error": f"{addr!r} is not an address or prefix"}
            decision = self.policy.unblock(addr)
            if decision is None:
                return {"ok": False, "error": f"{addr} is not blocked"}
            return {"ok": True, "unblocked": decision.network, "outcome": self.apply(decision)}
        if cmd == "flush":
            # One unblock per block the agent holds: entries others put in the XDP map
            # (an operator's shell) are not the agent's to remove.
            decisions = self.policy.flush()
            outcomes = [self.apply(d) for d in decisions]
            return {
                "ok": all(o in ("applied", "dry_run") for o in outcomes),
                "unblocked": [d.network for d in decisions],
            }
        if cmd == "status":
            return {
                "ok": True,
                "backend": self.backend.name,
                "dry_run": self.config.dry_run,
                "active": len(self.policy.active()),
                "counters": self.stats(),
                # Destinations of verdicts not blocked because their source may be forged.
                "unverified_victims": [
                    {"address": addr, "verdicts": n} for addr, n in self.policy.unverified_victims()
                ],
            }
        return {"ok": False, "error": f"unknown command {cmd!r} (list, unblock, flush, status)"}

    def _serve_control(self) -> None:
        sock = self._control
        if sock is None:
            return
        while sock.poll(0, zmq.POLLIN):
            raw = sock.recv()
            try:
                request = json.loads(raw)
                reply = self.control(request if isinstance(request, dict) else {})
            except (ValueError, UnicodeDecodeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            sock.send(json.dumps(reply).encode())

    # ---- control plane ---------------------------------------------------------------

    def apply_control(self, state: ControlState[Any]) -> None:
        """A new state's ``firewall`` settings (see :meth:`reconfigure`), and the live RAG
        stores the decisions go to."""
        self.reconfigure(state.config.firewall)
        if self.publisher is not None:
            self.publisher.follow(state.peers.get("rag", {}).values())

    def reconfigure(self, config: FirewallConfig) -> list[str]:
        """Take the live settings of ``config`` (see ``Policy.reconfigure``) and apply the
        unblocks it brings; returns the names of the settings that changed."""
        try:
            changed, unblocks = self.policy.reconfigure(config)
        except ConfigError as exc:  # the control session checked it already: not expected
            self.counters["config_refused"] += 1
            log.error("config change not applied: %s", exc)
            return []
        if not changed:
            return []
        self.config = dataclasses.replace(
            self.config, **{name: getattr(self.policy.config, name) for name in changed}
        )
        self.counters["config_changes"] += 1
        log.info(
            "firewall settings changed (from etcd): %s",
            ", ".join(f"{name}={getattr(self.config, name)!r}" for name in changed),
        )
        for decision in unblocks:
            self.apply(decision)
        return changed

    def health(self) -> tuple[str, dict[str, object]]:
        """State and counters for the control plane (called from its thread, while this
        one may be adding counters: the copies are retried)."""
        stats = stats_from_other_thread(self.stats)
        stats["active_blocks"] = stats.get("policy.active", 0)
        stats["backend"] = self.backend.name
        stats["dry_run"] = self.config.dry_run
        return "ok", stats

    # ---- loop ------------------------------------------------------------------------

    def step(self, timeout_ms: int = _POLL_MS) -> None:
        """One turn: verdicts (waiting up to ``timeout_ms``), control requests, a new
        config from the control plane, expiry."""
        if self.receiver is not None:
            got = self.receiver.recv(timeout_ms=timeout_ms)
            if got is not None:
                self.handle_batch(got.message)
        elif timeout_ms:
            time.sleep(timeout_ms / 1000)
        self._serve_control()
        self.follow_control()
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self.config.expiry_interval_s
            self.expire()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + _PRUNE_INTERVAL_S
            self.prune_log()
        if self.publisher is not None:
            self.publisher.flush()

    def prune_log(self) -> int:
        """Delete decisions older than ``decision_log_days`` (what restore needs stays);
        returns how many. Counted under ``decisions_pruned``."""
        days = self.config.decision_log_days
        if days <= 0:
            return 0
        pruned = self.decisions.prune(self.clock() - days * 86400)
        self.counters["decisions_pruned"] += pruned
        if pruned:
            log.info(
                "decision log: deleted %d decisions older than %g days (%s)",
                pruned,
                days,
                self.decisions.path,
            )
        return pruned

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        """Serve until :meth:`request_stop` or SIGTERM/Ctrl-C (SystemExit/KeyboardInterrupt)."""
        try:
            while not self._stop:
                self.step()
        except (KeyboardInterrupt, SystemExit) as exc:
            log.info("stopping (%s)", type(exc).__name__)

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update({f"policy.{k}": v for k, v in self.policy.counters().items()})
        if self.publisher is not None:
            out.update({f"blocks_out.{k}": v for k, v in self.publisher.counters.items()})
        return out

    def close(self) -> None:
        """Stop serving: the backend is closed (nftables removes its table), the log kept."""
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
            if self.control_path is not None:
                self.control_path.unlink(missing_ok=True)
        if self.receiver is not None:
            self.receiver.close()
        if self.publisher is not None:
            self.publisher.close()
        self.backend.close()
        self.decisions.close()
        if self.eve is not None:
            self.eve.close()
