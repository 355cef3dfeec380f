"""`mld firewall` as a user runs it, without root: help with examples, and a clear error
when no agent is running."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from tests.support import REPO

MLD = str(REPO / ".venv" / "bin" / "mld")


@pytest.mark.parametrize("args", [["firewall", "--help"], ["firewall", "run", "--help"]])
def test_help_has_examples(args: list[str]) -> None:
    done = subprocess.run([MLD, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "examples:" in done.stdout


@pytest.mark.parametrize("action", [["list"], ["unblock", "192.0.2.9"], ["flush"], ["status"]])
def test_actions_without_an_agent_say_so(tmp_path: Path, action: list[str]) -> None:
    config = tmp_path / "mld.yaml"
    config.write_text(yaml.safe_dump({"node": {"state_dir": str(tmp_path)}}))
    done = subprocess.run(
        [MLD, "--config", str(config), "firewall", *action],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no firewall agent is running" in done.stderr and "Traceback" not in done.stderr


EVIL = "\x1b]0;pwned\x07\x1b[2J\n"  # sets the window title, clears the screen, forges a line


def test_list_does_not_pass_terminal_controls(tmp_path: Path) -> None:
    """Attack: a family name carrying ESC sequences and a newline (set in
    ``firewall.families`` by whoever writes the config, and sent in a verdict) becomes a
    block whose family and reason ``mld firewall list`` printed raw, driving the
    operator's terminal. A real agent (dry run: no backend needs root) blocks on such a
    verdict and answers on its real control socket; the listed line is escaped."""
    from firewall.backends import NoBackend
    from firewall.config import FirewallConfig
    from firewall.decision_log import DecisionLog
    from firewall.policy import Policy
    from firewall.service import FirewallAgent
    from proto.events_pb2 import VerdictBatch
    from tests.firewall.support import malicious_verdict

    family = f"scan{EVIL}"
    sock = tmp_path / "fw.sock"
    fw = FirewallConfig(families=(family,), control_socket=str(sock), dry_run=True)
    decisions = DecisionLog(tmp_path / "decisions.sqlite")
    agent = FirewallAgent(fw, Policy(fw), NoBackend(), decisions, None, sock)
    config = tmp_path / "mld.yaml"
    data = {"node": {"state_dir": str(tmp_path)}, "firewall": {"control_socket": str(sock)}}
    config.write_text(yaml.safe_dump(data))
    listed: list[subprocess.CompletedProcess[str]] = []

    def list_blocks() -> None:
        try:
            listed.append(
                subprocess.run(
                    [MLD, "--config", str(config), "firewall", "list"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            )
        finally:
            agent.request_stop()

    # The agent runs on the thread that opened its decision log (SQLite objects stay on
    # their thread, as in `mld firewall run`); the command line runs beside it.
    lister = threading.Thread(target=list_blocks)
    try:
        agent.handle_batch(
            VerdictBatch(verdicts=[malicious_verdict("198.51.100.7", 0.99, n=1, family=family)])
        )
        assert agent.stats()["policy.active"] == 1
        lister.start()
        agent.run()
    finally:
        agent.request_stop()
        if lister.is_alive():
            lister.join(timeout=90)
        agent.close()
        decisions.close()
    assert listed, "mld firewall list did not finish"
    done = listed[0]
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1 active block(s)") and len(lines) == 3  # count, header, block
    assert "198.51.100.7" in lines[2] and "scan\\x1b]0;pwned\\x07\\x1b[2J\\n" in lines[2]
