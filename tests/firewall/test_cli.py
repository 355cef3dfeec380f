"""`mld firewall` as a user runs it, without root: help with examples, and a clear error
when no agent is running."""

from __future__ import annotations

import subprocess
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
