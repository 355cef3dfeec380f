"""The firewall agent with the XDP backend: a flow monitor attached in namespace b (the
tests/xdp driver), `mld firewall run --backend auto` there picks the XDP blocklist, and
the attacker's packets are dropped before b's stack while others pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.firewall.test_agent_netns import ATTACKER, BENIGN, TRUSTED, Agent, pair, pings
from tests.support import NetnsPair, wait_for
from tests.xdp.conftest import monitors  # the fixture: one flow monitor per call
from xdp.blocklist import Blocklist

pytestmark = [pytest.mark.netns, pytest.mark.bpf, pytest.mark.slow]
__all__ = ["monitors", "pair"]


def test_xdp_backend_blocks_then_lapses(pair: NetnsPair, monitors: Any, tmp_path: Path) -> None:
    monitors(pair.ns_b, [pair.dev_b])
    agent = Agent(pair, tmp_path, backend="auto", xdp_pin_dir=str(monitors.pin_dir))
    try:
        agent.start()
        agent.verdict(ATTACKER, 0.97)
        agent.verdict(TRUSTED, 1.0)
        wait_for(lambda: agent.listed() == [f"{ATTACKER}/32"], 10, "the block")
        assert not pings(pair, ATTACKER)
        assert pings(pair, BENIGN) and pings(pair, TRUSTED)
        with Blocklist(monitors.pin_dir) as bl:
            found = [e for e in bl.entries() if e.prefix == f"{ATTACKER}/32"]
            assert len(found) == 1, bl.entries()
            entry = found[0]
            assert entry.drops >= 1 and entry.expires_at is not None
        # TTL 15 s (the checks above must finish inside it, also on a loaded machine): the
        # agent removes the entry when it lapses, and traffic resumes.
        wait_for(lambda: pings(pair, ATTACKER), 60, "the block to lapse")
        wait_for(lambda: agent.listed() == [], 5, "the agent to forget it")
        with Blocklist(monitors.pin_dir) as bl:
            assert not [e for e in bl.entries() if e.prefix == f"{ATTACKER}/32"]
        _out, err = agent.stop()
        assert "backend xdp" in err
    finally:
        agent.stop()
