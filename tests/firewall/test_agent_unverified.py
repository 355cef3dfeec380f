"""The agent's handling of verdicts about sources that never completed a handshake: none is
blocked, the decision log gets a bounded number of rows, the status names the victims.

A flood of forged sources produces one malicious verdict per forged flow; the agent must
neither block them (issue 19, finding 1) nor turn them into as many log rows. The backend
is NoBackend (nothing to apply: no verdict here may reach a backend) and the verdicts are
made here: the real chain is exercised by tests/e2e/test_gateway_mode.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from firewall.backends import NoBackend
from firewall.config import FirewallConfig
from firewall.decision_log import DecisionLog
from firewall.policy import Policy
from firewall.service import UNVERIFIED_LOG_PER_S, FirewallAgent
from proto.events_pb2 import VerdictBatch
from tests.firewall.support import malicious_verdict


def test_forged_flood_verdicts_are_skipped_logged_bounded_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = FirewallConfig()
    log = DecisionLog(tmp_path / "decisions.sqlite")
    agent = FirewallAgent(config, Policy(config), NoBackend(), log, None, None)
    flood = [
        malicious_verdict(f"198.51.{i // 250}.{i % 250 + 1}", 1.0, n=i, family="ddos",
                          verified=False)
        for i in range(300)
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="firewall.service"):
        agent.handle_batch(VerdictBatch(detector_id="d", batch_seq=1, verdicts=flood))
    assert agent.counters["skip.unverified"] == 300
    assert agent.policy.active() == []
    rows = log.history(limit=1000)
    # At most UNVERIFIED_LOG_PER_S rows a second (the batch may straddle two seconds).
    assert 1 <= len(rows) <= 2 * UNVERIFIED_LOG_PER_S
    assert {r.outcome for r in rows} == {"unverified"}
    assert agent.counters["unverified.not_logged"] == 300 - len(rows)
    assert "it may be forged" in caplog.text and "192.0.2.2 (300)" in caplog.text
    status = agent.control({"cmd": "status"})
    assert status["unverified_victims"] == [{"address": "192.0.2.2", "verdicts": 300}]
    agent.close()
