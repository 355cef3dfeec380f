"""`mld lab` smoke tests: help, listing, status of a lab that is not up, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from base.exit_codes import EXIT_ERROR, EXIT_OK
from lab.cli import dev_exit_code
from tests.support import REPO, lab_topology, require_root_and


def mld(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mld.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_help_has_examples() -> None:
    for args in (("lab", "--help"), ("lab", "capture", "--help"), ("lab", "run", "--help")):
        proc = mld(*args)
        assert proc.returncode == 0 and "examples:" in proc.stdout, args


def test_recipes_list_as_json() -> None:
    proc = mld("lab", "recipes", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {"syn_flood", "ssh_bruteforce", "lateral_fanout"} <= {r["name"] for r in rows}


def test_a_lab_that_is_not_up(tmp_path: Path) -> None:
    require_root_and("ip")
    topo = lab_topology(tmp_path, "mldn-lab")
    common = ("--topology", str(topo.source), "--run-dir", str(tmp_path / "run"))
    status = mld("lab", "status", "--json", *common)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["up"] is False
    run = mld("lab", "run", "ping", *common)
    assert run.returncode == 1 and "run `mld lab up` first" in run.stderr
    unknown = mld("lab", "run", "teleport", *common)
    assert unknown.returncode == 1 and "no recipe 'teleport'" in unknown.stderr
    bad_set = mld("lab", "capture", "--scenario", "nope", "--out", str(tmp_path), *common)
    assert bad_set.returncode == 1


def test_dev_exit_code_counts_an_unverified_skip_as_handled() -> None:
    """A run whose only attack is a SYN flood (alerted, not blocked: unverified source) did
    what the product promises; one whose attack was neither blocked nor skipped did not."""

    def attack(blocked: float | None, unverified: bool) -> dict[str, object]:
        return {"spoofed": False, "blocked_after_s": blocked, "not_blocked_unverified": unverified}

    assert dev_exit_code({"attacks": [attack(None, True)]}) == EXIT_OK
    assert dev_exit_code({"attacks": [attack(None, False)]}) == EXIT_ERROR
    assert dev_exit_code({"attacks": [attack(None, False), attack(1.0, False)]}) == EXIT_OK
    assert dev_exit_code({"attacks": [attack(1.0, False)], "errors": ["x"]}) == EXIT_ERROR
