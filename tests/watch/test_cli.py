"""``mld watch`` as a real process: killed with SIGKILL mid-way and restarted, nothing is
analysed twice and nothing is skipped, counters continue; ``--once`` exit codes; --help."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.control.support import spawn_mld, stop
from tests.support import REPO, SHARED_DATA, wait_for
from tests.watch.support import GOOD, GROWING_SOURCE, expected_events, need_captures
from watch.state import state_path

BIG = SHARED_DATA / "pcaps/attacks/ddos/amp_udp_bacnet.pcapng"  # ~0.7 s to analyse
LATE = SHARED_DATA / "pcaps/attacks/ddos/amp_dns_rrsig_fragmented.pcap"


def _config(tmp: Path) -> Path:
    data = {
        "node": {"state_dir": str(tmp / "state")},
        "rag": {"db": str(tmp / "events.sqlite")},
        "watch": {
            "settle_s": 0.2,
            "closed_settle_s": 0.05,
            "poll_interval_s": 0.1,
            "retrain_every_files": 0,
        },
    }
    path = tmp / "mld.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _mld(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mld.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        check=False,
    )


def _counters(path: Path) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text())["counters"])
    except (OSError, ValueError, KeyError):
        return {}


def _stored(db: Path) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        con.close()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_sigkill_and_restart(tmp_path: Path, mode: str) -> None:
    need_captures()
    folder = tmp_path / "drop"
    folder.mkdir()
    config = _config(tmp_path)
    first = {
        "a-nmap_vanilla.pcap": GOOD["nmap_vanilla.pcap"],
        "b-nmap_service.pcap": GOOD["nmap_service.pcap"],
        "c-bacnet.pcapng": BIG,
        "d-masscan_tcp.pcap": GOOD["masscan_tcp.pcap"],
        "e-iodine.pcap": GOOD["iodine.pcap"],
        "f-syn_reflection.pcapng": GOOD["syn_reflection.pcapng"],
    }
    for i, (name, source) in enumerate(first.items()):
        shutil.copyfile(source, folder / name)
        os.utime(folder / name, (1_700_000_000 + i, 1_700_000_000 + i))  # read in this order
    state = state_path(folder.resolve(), "", str(tmp_path / "state"))
    log = tmp_path / "first.log"
    poll = ["--poll"] if mode == "poll" else []
    proc = spawn_mld(["watch", "run", str(folder), "--config", str(config), *poll], log)
    try:
        wait_for(lambda: _counters(state).get("files_ok", 0) >= 2, 60, "two files analysed")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    text = log.read_text()
    assert f"({mode}" in text, text
    before = set(re.findall(r"watch\.service: (\S+): \d+ flows", text))
    assert 2 <= len(before) < len(first), f"not killed mid-way: {before}"

    # Files that arrive while it is stopped.
    late = {"g-masscan_udp.pcap": GROWING_SOURCE, "h-dns_rrsig.pcap": LATE}
    for name, source in late.items():
        shutil.copyfile(source, folder / name)
    run = _mld("watch", "run", str(folder), "--once", "--json", "--config", str(config), *poll)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    per_file = {Path(x["file"]).name: x["status"] for x in lines if "file" in x}
    again = {n for n, s in per_file.items() if s == "ok"}
    known = {n for n, s in per_file.items() if s == "known"}  # stored just before the kill
    assert not before & again, f"analysed twice: {before & again}"
    assert before | again | known == set(first) | set(late)

    everything = {**first, **late}
    expected = sum(expected_events(p) for p in everything.values())
    assert _stored(tmp_path / "events.sqlite") == expected, "an event stored twice or missed"
    counters = _counters(state)
    assert counters["files_ok"] == len(everything)
    assert counters["events"] == expected
    assert lines[-1]["summary"]["files_ok"] == len(everything)

    # A third run finds nothing to do.
    run = _mld("watch", "run", str(folder), "--once", "--json", "--config", str(config))
    assert run.returncode == 0, run.stderr
    assert [json.loads(x) for x in run.stdout.splitlines() if '"file"' in x] == []


def test_once_exit_code_and_sigterm(tmp_path: Path) -> None:
    need_captures()
    folder = tmp_path / "drop"
    folder.mkdir()
    config = _config(tmp_path)
    shutil.copyfile(GOOD["nmap_vanilla.pcap"], folder / "good.pcap")
    ok = _mld("watch", "run", str(folder), "--once", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"good\.pcap: \d+ flows", ok.stderr)
    (folder / "bad.pcap").write_text("not a capture")
    bad = _mld("watch", "run", str(folder), "--once", "--config", str(config))
    assert bad.returncode == 4, bad.stderr  # some inputs failed
    state = state_path(folder.resolve(), "", str(tmp_path / "state"))
    assert (state.with_name(state.stem + ".failed") / "bad.pcap.reason.json").exists()
    assert not (folder / ".failed").exists()  # never inside the watched folder

    log = tmp_path / "run.log"
    proc = spawn_mld(["watch", "run", str(folder), "--config", str(config)], log)
    try:
        wait_for(lambda: "watching " in log.read_text(), 60, "the watcher to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)
    assert "watch stopped: files_ok=1 files_partial=0 files_failed=1" in log.read_text()


def test_help_has_examples() -> None:
    run = _mld("watch", "run", "--help", timeout=30)
    assert run.returncode == 0
    assert "examples:" in run.stdout and "mld watch run /var/captures --once" in run.stdout
