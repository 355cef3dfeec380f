"""Smoke tests of the ``mld`` command, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

MLD = shutil.which("mld", path=str(Path(sys.executable).parent))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert MLD, "the mld console script is not installed in this venv; run `make install`"
    return subprocess.run(
        [MLD, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["keys", "--help"],
        ["keys", "new", "--help"],
        ["config", "--help"],
        ["config", "show", "--help"],
        ["config", "check", "--help"],
    ],
)
def test_help_has_examples(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert "example" in proc.stdout


def test_no_command_prints_usage_and_exits_2() -> None:
    proc = run()
    assert proc.returncode == 2
    assert "usage: mld" in proc.stdout


def test_keys_new_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "node.key"
    proc = run("keys", "new", str(key), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(f"{key}.pub").read_text().strip() == out["public_key"]
    shown = json.loads(run("keys", "show", str(key), "--json").stdout)
    assert shown["public_key"] == out["public_key"]


def test_keys_new_refuses_to_overwrite_and_show_an_open_key(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    assert run("keys", "new", str(key)).returncode == 0
    again = run("keys", "new", str(key))
    assert again.returncode == 1
    assert "--force" in again.stderr
    os.chmod(key, 0o644)
    shown = run("keys", "show", str(key))
    assert shown.returncode == 1
    assert "chmod 600" in shown.stderr
    assert "Traceback" not in shown.stderr


def test_config_show_json_reads_the_given_file(tmp_path: Path) -> None:
    cfg = tmp_path / "mld.yaml"
    cfg.write_text("transport:\n  replay_window: 128\n")
    proc = run("config", "show", "--json", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["source"] == str(cfg)
    assert out["config"]["transport"]["replay_window"] == 128


def test_config_check_names_bad_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "mld.yaml"
    cfg.write_text("transport:\n  replay_windw: 128\n")
    proc = run("config", "check", str(cfg))
    assert proc.returncode == 1
    assert "replay_windw" in proc.stderr
    assert str(cfg) in proc.stderr
    assert "did you mean 'replay_window'" in proc.stderr


def test_version() -> None:
    proc = run("version", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["version"]
