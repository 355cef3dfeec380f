"""``mld sniffer flows`` and ``mld sniffer run --help`` run as a user runs them, on real
captures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SHARED_DATA

MLD = shutil.which("mld", path=str(Path(sys.executable).parent))
PCAPS = SHARED_DATA / "pcaps"
NDPI = PCAPS / "ndpi" / "443-chrome.pcap"
MASSCAN = PCAPS / "attacks" / "scan" / "masscan_tcp_0_1000.pcap"

needs_pcaps = pytest.mark.skipif(not MASSCAN.exists(), reason=f"needs the captures in {PCAPS}")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert MLD, "the mld console script is not installed in this venv; run `make install`"
    return subprocess.run([MLD, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("action", ["flows", "run"])
def test_help_has_examples(action: str) -> None:
    proc = run("sniffer", action, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout and f"mld sniffer {action}" in proc.stdout


@needs_pcaps
def test_table_of_a_benign_capture() -> None:
    proc = run("sniffer", "flows", str(NDPI))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("time (UTC)")
    assert len(lines) > 1
    assert any(" tcp " in line and ":443" in line for line in lines[1:])


@needs_pcaps
def test_json_lines_hold_every_field() -> None:
    proc = run("sniffer", "flows", "--json", "-q", str(MASSCAN))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) > 900
    first = records[0]
    for key in ("flow_id", "src_addr", "dst_port", "fwd", "bwd", "src_context", "fast_rule"):
        assert key in first
    assert "syn_count" in first["fwd"] and "distinct_dst_ports" in first["src_context"]
    attacker = [r for r in records if r["src_addr"] == "172.31.15.102"]
    assert attacker and {r["fast_rule"] for r in attacker} >= {"port_scan"}
    assert proc.stderr == ""  # -q: no progress, no log lines


@needs_pcaps
def test_limit() -> None:
    proc = run("sniffer", "flows", "--json", "--limit", "7", str(MASSCAN))
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 7


@needs_pcaps
def test_truncated_file_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "rotated"
    folder.mkdir()
    data = MASSCAN.read_bytes()
    (folder / "a-truncated.pcap").write_bytes(data[: len(data) // 2 + 7])  # cut mid-packet
    shutil.copy(NDPI, folder / "b-good.pcap")
    proc = run("sniffer", "flows", "--json", str(folder))
    assert proc.returncode == 4  # some inputs failed, the others were read
    assert "a-truncated.pcap" in proc.stderr and "b-good.pcap" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    points = {r["observation_point"] for r in records}
    # Flows before the cut are kept, and the next file is read.
    assert {"a-truncated.pcap", "b-good.pcap"} <= points


def test_missing_path_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    proc = run("sniffer", "flows", str(tmp_path / "absent.pcap"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
