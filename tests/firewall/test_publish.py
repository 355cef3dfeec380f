"""The agent's decisions to the RAG store (firewall/publish.py): every recorded decision
goes out in its wire form, and a RAG store that is gone never holds up blocking."""

from __future__ import annotations

import socket
from pathlib import Path

from crypto_transport import KeyPair, Keyring, Sender, TransportConfig
from firewall.backends import NoBackend
from firewall.config import FirewallConfig
from firewall.decision_log import DecisionLog
from firewall.policy import Policy
from firewall.publish import DecisionPublisher, to_block_decision
from firewall.service import FirewallAgent
from proto.events_pb2 import BlockDecision, VerdictBatch
from tests.firewall.support import malicious_verdict


def _dead_endpoint() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_wire_form_of_a_decision() -> None:
    policy = Policy(FirewallConfig(auto_allowlist=()), clock=lambda: 1000.0)
    d = policy.decide(malicious_verdict("198.51.100.4", 0.95, n=1))
    wire = to_block_decision(d, "applied", agent_id="fw-1", seq=7, backend="xdp")
    assert wire.action == BlockDecision.ACTION_BLOCK
    assert wire.outcome == BlockDecision.OUTCOME_APPLIED
    assert wire.backend == BlockDecision.BACKEND_XDP
    assert wire.addr == bytes([198, 51, 100, 4]) and wire.prefix_len == 32
    assert list(wire.verdict_ids) == ["det-1"] and wire.decision_id == "fw-1:7"
    assert wire.expires_ts_ns == int((1000.0 + wire.ttl_s) * 1e9)


def test_a_rag_store_that_is_gone_does_not_hold_up_the_agent(tmp_path: Path) -> None:
    # The receiver is gone and the socket queues nothing (immediate): each send waits
    # send_timeout_ms, far longer than handling a verdict. The agent hands batches to the
    # publisher's queue and goes on; when that is full too, the decisions are counted as
    # dropped (the decision log has them).
    ring = Keyring(KeyPair.generate(), grace_s=60)
    ring.add_peer("rag", KeyPair.generate().public)
    settings = TransportConfig(send_hwm=1, send_timeout_ms=500)
    sender = Sender(
        pattern="push", endpoint=_dead_endpoint(), channel="blocks", sender_id="fw-1",
        keyring=ring, recipients=["rag"], settings=settings, immediate=True,
    )  # fmt: skip
    publisher = DecisionPublisher(sender, "fw-1", queue_batches=2)
    cfg = FirewallConfig(dry_run=True, auto_allowlist=(), new_blocks_per_prefix_burst=100)
    log = DecisionLog(tmp_path / "decisions.sqlite")
    agent = FirewallAgent(
        cfg, Policy(cfg), NoBackend(), log, None, None, publisher=publisher
    )  # fmt: skip
    for n in range(20):
        agent.handle_batch(VerdictBatch(verdicts=[malicious_verdict(f"198.51.100.{n}", 0.99, n=n)]))
        publisher.flush()
    assert agent.counters["block.dry_run"] == 20
    # Batches were dropped at a full queue: flush() returned instead of waiting for room.
    assert publisher.counters["dropped"] > 0
    # Closing waits for the sends in progress (each gives up after 500 ms), then closes.
    publisher.close(timeout_s=30)
    assert publisher.counters["dropped"] == 20 and not publisher.counters["sent"]
    log.close()
