"""Tests of the SQLite decision log on real files: recording, history, restore after a
restart (live blocks come back, expired and unblocked ones do not) and pruning."""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from base.errors import FirewallError
from firewall import DecisionLog, FirewallConfig, Policy
from firewall.backends import NoBackend
from firewall.decision_log import SCHEMA_VERSION
from firewall.service import FirewallAgent
from proto.events_pb2 import Verdict


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verdict(
    src: str, score: float = 0.97, family: str = "scan", vid: str = "v", verified: bool = True
) -> Verdict:
    addr = ipaddress.ip_address(src)
    v = Verdict(verdict_id=vid, final_score=score, family=family, src_verified=verified)
    v.flow.ip_version = addr.version
    v.flow.src_addr = addr.packed
    return v


def test_record_and_history(tmp_path: Path) -> None:
    policy = Policy(FirewallConfig(), clock=Clock())
    with DecisionLog(tmp_path / "fw" / "decisions.sqlite") as log:
        d = policy.decide(verdict("198.51.100.7", vid="det:1"))
        log.record(d, "xdp", "applied")
        log.record(policy.decide(verdict("198.51.100.8", 0.1)), "none")
        log.record(policy.decide(verdict("2001:db8::1")), "nftables", "failed")
        (latest, *_) = log.history(10)
        assert (latest.addr, latest.prefix_len, latest.outcome) == ("2001:db8::", 64, "failed")
        (entry,) = log.history(10, address="198.51.100.7")
        assert (entry.action, entry.backend, entry.outcome) == ("block", "xdp", "applied")
        assert entry.verdict_ids == ("det:1",)
        assert (entry.ttl_s, entry.expires_ts, entry.reason) == (d.ttl_s, d.expires_ts, d.reason)
        assert entry.final_score == pytest.approx(0.97)
        assert log.history(10, address="198.51.100.8/32")[0].outcome == "below_threshold"
        assert len(log.history(2)) == 2


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "decisions.sqlite"
    DecisionLog(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(FirewallError, match=r"schema version 99.*move the file aside"):
        DecisionLog(path)


def test_unwritable_location_raises_firewall_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FirewallError, match="cannot open the decision log"):
        DecisionLog(tmp_path / "file" / "decisions.sqlite")


def test_live_blocks_survive_reopen_expired_and_unblocked_do_not(tmp_path: Path) -> None:
    path = tmp_path / "decisions.sqlite"
    clock = Clock()
    cfg = replace(FirewallConfig(), min_extend_s=1)
    policy = Policy(cfg, clock=clock)
    log = DecisionLog(path)
    live = policy.decide(verdict("198.51.100.1", vid="a"))
    log.record(live, "xdp", "applied")
    short = policy.decide(verdict("198.51.100.2"), ttl_s=10)
    log.record(short, "xdp", "applied")
    gone = policy.decide(verdict("2001:db8::66"))
    log.record(gone, "xdp", "applied")
    log.record(policy.decide(verdict("198.51.100.3")), "xdp", "failed")
    log.record(policy.decide(verdict("198.51.100.4")), "none", "rate_limited")
    clock.now += 60
    unblock = policy.unblock("2001:db8::66")
    assert unblock is not None
    log.record(unblock, "xdp", "applied")
    extended = policy.decide(verdict("198.51.100.1", 0.99, vid="b"))
    assert extended.action == "extend"
    log.record(extended, "xdp", "applied")
    log.close()

    # Restart: a new process opens the same file 100 s later.
    clock.now += 40
    with DecisionLog(path) as reopened:
        blocks = reopened.live_blocks(clock.now)
    assert [b.network for b in blocks] == ["198.51.100.1/32"]
    (block,) = blocks
    assert (block.since, block.expires_ts) == (live.decided_ts, extended.expires_ts)
    assert block.verdict_ids == ("b",)

    restarted = Policy(cfg, clock=clock)
    assert restarted.restore(blocks) == []
    assert [b.network for b in restarted.active()] == ["198.51.100.1/32"]
    # The restored block is an active block: a new verdict extends it, not re-blocks it.
    clock.now += 120
    assert restarted.decide(verdict("198.51.100.1")).action == "extend"
    clock.now = block.expires_ts + 10_000
    assert [u.addr for u in restarted.expire()] == ["198.51.100.1"]


def test_dry_run_blocks_restored_only_when_asked(tmp_path: Path) -> None:
    clock = Clock()
    policy = Policy(replace(FirewallConfig(), dry_run=True), clock=clock)
    with DecisionLog(tmp_path / "d.sqlite") as log:
        log.record(policy.decide(verdict("198.51.100.9")), "none")
        assert log.live_blocks(clock.now) == []
        assert len(log.live_blocks(clock.now, include_dry_run=True)) == 1


def test_restore_rejects_absurd_expiry(tmp_path: Path) -> None:
    clock = Clock()
    policy = Policy(FirewallConfig(), clock=clock)
    with DecisionLog(tmp_path / "d.sqlite") as log:
        d = policy.decide(verdict("198.51.100.5"))
        log.record(replace(d, expires_ts=d.decided_ts + 10**9), "xdp", "applied")
        blocks = log.live_blocks(clock.now)
    fresh = Policy(FirewallConfig(), clock=clock)
    (rejected,) = fresh.restore(blocks)
    assert rejected.rejected == "absurd_ttl"
    assert fresh.active() == []
    assert fresh.counters()["rejected_absurd_ttl"] == 1


def test_prune_keeps_what_restore_needs(tmp_path: Path) -> None:
    clock = Clock()
    policy = Policy(replace(FirewallConfig(), max_ttl_s=10**6, ttl_cap_s=10**6), clock=clock)
    with DecisionLog(tmp_path / "d.sqlite") as log:
        long = policy.decide(verdict("198.51.100.1"), ttl_s=100_000)
        log.record(long, "xdp", "applied")
        for i in range(5):
            log.record(policy.decide(verdict(f"198.51.100.{10 + i}", 0.1)), "none")
        short = policy.decide(verdict("198.51.100.2"), ttl_s=10)
        log.record(short, "xdp", "applied")
        clock.now += 1000
        (unblock,) = policy.expire()
        log.record(unblock, "xdp", "applied")
        # The five skips and the superseded block of .2 go; the latest per prefix stay.
        assert log.prune(clock.now) == 6
        assert [b.network for b in log.live_blocks(clock.now)] == ["198.51.100.1/32"]
        assert [e.action for e in log.history(10, "198.51.100.2")] == ["unblock"]
        assert log.prune(clock.now) == 0


def test_the_running_agent_prunes_the_log_past_decision_log_days(tmp_path: Path) -> None:
    """Before, nothing called prune(): the log grew for ever (every verdict about every
    source is a row). The agent now prunes at its first step and hourly after; what a
    restart must restore stays."""
    clock = Clock()
    cfg = replace(FirewallConfig(), max_ttl_s=10**9, ttl_cap_s=10**9, decision_log_days=30)
    policy = Policy(cfg, clock=clock)
    path = tmp_path / "d.sqlite"
    with DecisionLog(path) as log:
        # 40 days ago: a long block still live, and skipped verdicts about other sources.
        log.record(policy.decide(verdict("198.51.100.1"), ttl_s=100 * 86400), "none", "applied")
        for i in range(5):
            log.record(policy.decide(verdict(f"198.51.100.{10 + i}", 0.1)), "none")
        clock.now += 40 * 86400
        # Today: one more skipped verdict (kept: younger than 30 days).
        log.record(policy.decide(verdict("198.51.100.99", 0.1)), "none")
    log = DecisionLog(path)
    agent = FirewallAgent(cfg, Policy(cfg, clock=clock), NoBackend(), log, None, None, clock=clock)
    try:
        agent.step(timeout_ms=0)
        assert agent.counters["decisions_pruned"] == 5
        assert [e.addr for e in log.history(10)] == ["198.51.100.99", "198.51.100.1"]
        assert [b.network for b in log.live_blocks(clock.now)] == ["198.51.100.1/32"]
        # Not again before the next interval.
        log.record(policy.decide(verdict("198.51.100.98", 0.1)), "none")
        clock.now += 31 * 86400
        agent.step(timeout_ms=0)
        assert agent.counters["decisions_pruned"] == 5
        assert agent.prune_log() == 2  # the two skips, now older than 30 days
    finally:
        agent.close()
        log.close()


def test_decision_log_days_zero_keeps_everything(tmp_path: Path) -> None:
    clock = Clock()
    cfg = replace(FirewallConfig(), decision_log_days=0)
    policy = Policy(cfg, clock=clock)
    with DecisionLog(tmp_path / "d.sqlite") as log:
        log.record(policy.decide(verdict("198.51.100.10", 0.1)), "none")
        clock.now += 1000 * 86400
        agent = FirewallAgent(cfg, policy, NoBackend(), log, None, None, clock=clock)
        agent.step(timeout_ms=0)
        assert agent.prune_log() == 0 and len(log.history(10)) == 1
        agent.close()
