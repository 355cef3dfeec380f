"""The firewall agent's Suricata EVE drop events: one per block, extension and unblock it
carries out, valid against Suricata's schema, so the SIEM that reads the detector's alerts
also sees whether the IPS acted."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema

from detector.eve import SIGNATURES, EveWriter
from firewall.backends import NoBackend
from firewall.config import FirewallConfig
from firewall.decision_log import DecisionLog
from firewall.policy import Policy
from firewall.service import FirewallAgent
from tests.firewall.support import malicious_verdict
from tests.support import SHARED_DATA


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_979_200.0

    def __call__(self) -> float:
        return self.now


def test_every_decision_the_agent_carries_out_is_a_valid_drop_event(tmp_path: Path) -> None:
    schema = json.loads((SHARED_DATA / "suricata-eve-schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    clock = Clock()
    cfg = replace(FirewallConfig(), dry_run=True, ttl_base_s=60, min_extend_s=1)
    eve_path = tmp_path / "eve.json"
    agent = FirewallAgent(
        cfg, Policy(cfg, clock=clock), NoBackend(), DecisionLog(tmp_path / "d.sqlite"),
        None, None, clock=clock, eve=EveWriter(eve_path), agent_id="gw-1",
    )  # fmt: skip
    try:
        verdict = malicious_verdict("203.0.113.66", 0.97, n=1)
        agent.apply(agent.policy.decide(verdict))  # block
        clock.now += 30
        agent.apply(agent.policy.decide(verdict))  # extend
        agent.apply(agent.policy.decide(malicious_verdict("203.0.113.67", 0.2, n=2)))  # below
        clock.now += 120
        for decision in agent.policy.expire():  # unblock
            agent.apply(decision)
    finally:
        agent.close()
    events = [json.loads(line) for line in eve_path.read_text().splitlines()]
    assert [e["drop"]["reason"].split(" ", 1)[0] for e in events] == ["block", "extend", "unblock"]
    for event in events:
        assert [err.message for err in validator.iter_errors(event)] == []
        assert event["event_type"] == "drop" and event["src_ip"] == "203.0.113.66"
        assert event["host"] == "gw-1" and event["drop"]["reason"].endswith("(dry run)")
        assert event["alert"]["signature_id"] == SIGNATURES["scan"][""].sid
        assert event["alert"]["metadata"]["ml_family"] == ["scan"]
    assert [e["alert"]["action"] for e in events] == ["blocked", "blocked", "allowed"]
