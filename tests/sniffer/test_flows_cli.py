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


EVIL = "\x1b]0;pwned\x07\x1b[2J\n"  # sets the window title, clears the screen, forges a line


@needs_pcaps
def test_file_names_do_not_drive_the_terminal(tmp_path: Path) -> None:
    """Attack: whoever can write into a folder of captures names files with ESC sequences
    and a newline (``bad<ESC>]0;pwned<BEL><ESC>[2J<LF>.pcap``); ``mld sniffer flows DIR``
    printed the name raw in its rejection line and log warning, so the operator's terminal
    got a new title, a cleared screen and a forged line. Now every such line shows the
    name with its controls escaped, on one line."""
    (tmp_path / f"bad{EVIL}.pcap").write_text("not a capture")
    shutil.copyfile(NDPI, tmp_path / f"good{EVIL}.pcap")
    proc = run("sniffer", "flows", str(tmp_path))
    assert proc.returncode == 4, proc.stderr  # one file rejected
    for out in (proc.stdout, proc.stderr):
        assert "\x1b" not in out and "\x07" not in out
    rejected = [line for line in proc.stderr.splitlines() if line.startswith("mld: rejected")]
    assert len(rejected) == 1 and "bad\\x1b]0;pwned\\x07\\x1b[2J\\n.pcap" in rejected[0]
    warned = [line for line in proc.stderr.splitlines() if "unknown file format" in line]
    assert len(warned) == 2  # the log warning and the rejection, each on one line
    assert all(line.startswith(("WARNING", "mld: rejected")) for line in warned)
