"""Blocks are events: the firewall agent's decisions reach `mld rag run` over the encrypted
transport (channel ``blocks``) and the console answers from them.

A real ``mld rag run`` process, a real FirewallAgent (dry run: no kernel state is needed
to decide, log and publish; the backend is the agent's own dry-run one) with its
DecisionPublisher sealing for the store's key, and real verdicts of the masscan capture
the RAG store holds the events of.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml

from crypto_transport import KeyPair, Keyring, Sender, TransportConfig
from firewall.backends import NoBackend
from firewall.config import FirewallConfig
from firewall.decision_log import DecisionLog
from firewall.policy import Policy
from firewall.publish import DecisionPublisher
from firewall.service import FirewallAgent
from proto.events_pb2 import BlockDecision, DecisionBatch, EventBatch, VerdictBatch
from rag.answer import Answerer
from rag.config import RagConfig
from rag.console import Console
from rag.indexed_store import RagStore
from rag.store import Filters
from tests.control.support import spawn_mld, stop
from tests.firewall.support import malicious_verdict
from tests.rag.conftest import NOW, SCANNER
from tests.support import wait_for

ATTACKER = "203.0.113.66"


def _count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


_ROLES = {"det-a": "detector", "fw-1": "firewall"}


def _start_rag(tmp: Path, peers: dict[str, str]) -> tuple[object, Path, str, str, KeyPair]:
    key = KeyPair.generate()
    key.save(tmp / "rag.key")
    config = tmp / "rag.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"id": "rag-1", "state_dir": str(tmp / "state")},
                "transport": {
                    "key_file": str(tmp / "rag.key"),
                    "peers": peers,
                    # Names that do not spell a component get their roles here (issue 19).
                    "peer_roles": {p: [_ROLES[p]] for p in peers},
                },
                "rag": {"save_every_s": 0.5},
            }
        )
    )
    log = tmp / "rag.log"
    proc = spawn_mld(
        [
            "rag", "run", "--config", str(config), "--listen", "tcp://127.0.0.1:0",
            "--listen-blocks", "tcp://127.0.0.1:0",
        ],
        log,
    )  # fmt: skip
    try:
        wait_for(lambda: "storing firewall decisions from" in log.read_text(), 30, "mld rag run")
    except AssertionError:
        stop(proc)
        raise AssertionError(log.read_text()) from None
    text = log.read_text()
    events = text.split("storing scored events from ")[1].split()[0]
    blocks = text.split("storing firewall decisions from ")[1].split()[0]
    return proc, tmp / "state" / "rag" / "events.sqlite", events, blocks, key


def test_decisions_reach_the_console_over_the_encrypted_channel(
    small_store: RagStore, tmp_path: Path
) -> None:
    det, fw = KeyPair.generate(), KeyPair.generate()
    proc, db, events_end, blocks_end, rag_key = _start_rag(
        tmp_path, {"det-a": det.public_b64, "fw-1": fw.public_b64}
    )
    senders: list[Sender] = []
    agent = None
    try:
        # The detector's events of the scan, as it sent them.
        rows = small_store.store.rows(Filters(src=(SCANNER,), min_label=3), limit=5)
        scored = [small_store.store.event(r.id) for r in rows]
        ring = Keyring(det, grace_s=60)
        ring.add_peer("rag", rag_key.public)
        ev_sender = Sender(
            pattern="push", endpoint=events_end, channel="events", sender_id="det-a",
            keyring=ring, recipients=["rag"], settings=TransportConfig(),
        )  # fmt: skip
        senders.append(ev_sender)
        ev_sender.send(EventBatch(detector_id="det-a", events=[e for e in scored if e]))
        wait_for(lambda: _count(db, "events") == len(rows), 20, "the events")

        # The firewall agent, deciding on those verdicts on its own clock.
        clock = [NOW - 600.0]
        cfg = FirewallConfig(dry_run=True, auto_allowlist=(), ttl_base_s=300, block_unverified=True)
        fw_ring = Keyring(fw, grace_s=60)
        fw_ring.add_peer("rag", rag_key.public)
        out = Sender(
            pattern="push", endpoint=blocks_end, channel="blocks", sender_id="fw-1",
            keyring=fw_ring, recipients=["rag"], settings=TransportConfig(),
        )  # fmt: skip
        agent = FirewallAgent(
            cfg, Policy(cfg, clock=lambda: clock[0]), NoBackend(),
            DecisionLog(tmp_path / "decisions.sqlite"), None, None,
            clock=lambda: clock[0], agent_id="fw-1", publisher=DecisionPublisher(out, "fw-1"),
        )  # fmt: skip
        agent.handle_batch(VerdictBatch(verdicts=[e.verdict for e in scored if e]))
        agent.handle_batch(VerdictBatch(verdicts=[malicious_verdict("127.0.0.9", 0.99, n=90)]))
        clock[0] = NOW - 400.0
        agent.handle_batch(VerdictBatch(verdicts=[malicious_verdict(ATTACKER, 0.97, n=91)]))
        clock[0] = NOW - 290.0  # the scanner's 300 s are over, the attacker's are not
        agent.expire()
        agent.publisher.flush()  # type: ignore[union-attr]
        # block scanner, refused 127.0.0.9 (allowlisted), block attacker, scanner expired
        wait_for(lambda: _count(db, "blocks") == 4, 20, "the four decisions in the store")
    finally:
        if agent is not None:
            agent.close()
        for s in senders:
            s.close()
        stop(proc)

    rag = RagStore(db, RagConfig(), readonly=True)
    try:
        rag.open_indexes()
        # Asked while the attacker's block (NOW-400 + 300 s) still runs.
        console = Console(rag, Answerer(RagConfig(), "none"), now=NOW - 250)
        got = console.handle("was anything blocked?")
        assert got is not None
        reply = got.data["reply"]
        assert "2 address(es) blocked" in reply and SCANNER in reply and ATTACKER in reply
        assert "1 block(s) were refused" in reply
        assert f"Blocked now: {ATTACKER}" in reply
        why = console.answer(f"why was {SCANNER} blocked?")
        assert f"{SCANNER} was blocked at" in why.reply and "scan" in why.reply
        # The flows behind the block are the detector's events of those verdicts.
        assert set(why.cited) <= {r.id for r in rag.store.rows(Filters(src=(SCANNER,)))}
        assert why.cited
        now = console.answer("what is blocked now?")
        assert ATTACKER in now.reply and SCANNER not in now.reply.split("Why:")[0]
        when = console.answer(f"when was {SCANNER} unblocked?")
        assert "expired" in when.reply and SCANNER in when.reply
        never = console.answer("why was 198.51.100.7 blocked?")
        assert "was not blocked" in never.reply
    finally:
        rag.close()


def test_a_forged_decision_from_an_unknown_key_is_not_stored(tmp_path: Path) -> None:
    """Attack: someone who can reach the store's blocks endpoint but holds no key the
    store trusts sends an "unblock" of the attacker's address, to make the console say
    the block was lifted. The frame is refused (counted), nothing is stored; a decision
    from the trusted agent sent right after is stored, so the refusal is not a dead
    channel."""
    fw, forger = KeyPair.generate(), KeyPair.generate()
    proc, db, _, blocks_end, rag_key = _start_rag(tmp_path, {"fw-1": fw.public_b64})
    senders = []
    try:
        # The forger knows the store's public key (it is public), not a trusted private one.
        for name, pair in (("fw-1", forger), ("fw-1", fw)):
            ring = Keyring(pair, grace_s=60)
            ring.add_peer("rag", rag_key.public)
            s = Sender(
                pattern="push", endpoint=blocks_end, channel="blocks", sender_id=name,
                keyring=ring, recipients=["rag"], settings=TransportConfig(),
            )  # fmt: skip
            senders.append(s)
            decision = BlockDecision(
                decision_id=f"{name}:1", agent_id=name, decided_ts_ns=int(NOW * 1e9),
                action=BlockDecision.ACTION_UNBLOCK, addr=bytes([203, 0, 113, 66]),
                prefix_len=32, reason="unblocked by the operator",
                outcome=BlockDecision.OUTCOME_APPLIED,
            )  # fmt: skip
            s.send(DecisionBatch(agent_id=name, decisions=[decision]))
        wait_for(lambda: _count(db, "blocks") >= 1, 20, "the trusted decision")
    finally:
        for s in senders:
            s.close()
        stop(proc)
    log = (tmp_path / "rag.log").read_text()
    assert _count(db, "blocks") == 1, log
    assert "rejected" in log or "refused" in log, log
