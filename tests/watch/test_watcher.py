"""The watch folder in-process on real shared captures: good, truncated, not-a-capture and
still-growing files, in inotify and poll modes; the retrain hook's counts; the state."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support import wait_for
from tests.watch.support import (
    FAST,
    GOOD,
    GROWING_SOURCE,
    RecordingRetrain,
    SlowWriter,
    copy_good,
    expected_events,
    make_rig,
    pcap_records,
    truncate,
)
from watch.inotify import inotify_unavailable
from watch.readiness import held_for_writing
from watch.service import Analysis
from watch.state import file_key

MODES = [pytest.param(False, id="inotify"), pytest.param(True, id="poll")]


def _meta_rows(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'watch:%'").fetchone()[0])
    finally:
        con.close()


def test_good_truncated_and_bad_files(tmp_path: Path) -> None:
    """--once over a folder: good files stored whole, a truncated one keeps its flows up to
    the cut and is moved aside, a non-capture and an empty file store nothing and are
    moved aside with the reason; nothing is analysed twice."""
    rig = make_rig(tmp_path)
    good = copy_good(rig.folder, ["masscan_tcp.pcap", "nmap_service.pcap", "iodine.pcap"])
    cut = tmp_path / "cut.pcap"
    truncate(GOOD["masscan_tcp.pcap"], cut, 50_000)
    kept = expected_events(cut)
    assert 0 < kept < expected_events(GOOD["masscan_tcp.pcap"])
    shutil.copyfile(cut, rig.folder / "cut.pcap")
    (rig.folder / "notes.pcap").write_text("not a capture\n")
    (rig.folder / "empty.pcapng").write_bytes(b"")
    (rig.folder / "readme.txt").write_text("not a capture name: ignored\n")
    (rig.folder / ".partial.pcap").write_bytes(b"hidden: ignored")

    watcher = rig.build(poll=False)
    results = watcher.run(once=True)
    rig.store.close()  # type: ignore[union-attr]

    status = {r.path.name: r.status for r in results}
    assert status == {
        "masscan_tcp.pcap": "ok",
        "nmap_service.pcap": "ok",
        "iodine.pcap": "ok",
        "cut.pcap": "partial",
        "notes.pcap": "failed",
        "empty.pcapng": "failed",
    }
    assert rig.stored_events() == good + kept
    failed = rig.state().path.with_suffix(".failed")  # beside the state file
    moved = ("cut.pcap", "notes.pcap", "empty.pcapng")
    assert sorted(p.name for p in failed.iterdir()) == sorted(
        [f"{n}{x}" for n in moved for x in ("", ".reason.json")]
    )
    why = json.loads((failed / "cut.pcap.reason.json").read_text())
    assert why["status"] == "partial" and why["events_stored"] == kept
    assert "byte offset 50000" in why["message"]
    why = json.loads((failed / "notes.pcap.reason.json").read_text())
    assert why["status"] == "failed" and why["events_stored"] == 0
    assert "unknown file format" in why["message"]
    c = watcher.state.counters
    assert (c["files_ok"], c["files_partial"], c["files_failed"]) == (3, 1, 2)
    assert c["events"] == good + kept
    assert _meta_rows(rig.db) == 4  # one per file whose events are stored

    # Again: nothing new. A copy of an analysed capture is recognised by its content; a
    # failed file moved back is tried again (and fails again).
    shutil.copyfile(rig.folder / "iodine.pcap", rig.folder / "iodine-copy.pcap")
    shutil.move(failed / "notes.pcap", rig.folder / "notes.pcap")
    again = rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert {r.path.name: r.status for r in again} == {"notes.pcap": "failed"}
    assert rig.stored_events() == good + kept
    assert rig.watcher is not None and rig.watcher.state.counters["files_failed"] == 3


@pytest.mark.parametrize("poll", MODES)
def test_a_growing_file_is_read_once_when_finished(tmp_path: Path, poll: bool) -> None:
    """A capture written record by record, held open throughout and quiet for longer than
    the settle time half-way, is not read until its writer closes it, then once, whole."""
    rig = make_rig(tmp_path)
    watcher = rig.start(poll=poll)
    try:
        if not poll:
            assert watcher.mode == "inotify", watcher.why_poll
        copy_good(rig.folder, ["nmap_vanilla.pcap"])
        wait_for(lambda: rig.done("nmap_vanilla.pcap"), 20, "a good file to be analysed")
        writer = SlowWriter(GROWING_SOURCE, rig.folder / "growing.pcap", FAST.settle_s * 3)
        writer.start()
        writer.thread.join(timeout=30)
        assert writer.error is None and writer.closed_at is not None
        wait_for(lambda: rig.done("growing.pcap"), 20, "the finished file to be analysed")
        time.sleep(FAST.settle_s + 3 * FAST.poll_interval_s)  # time to (wrongly) read it again
    finally:
        rig.stop()
    got = [(t, r) for t, r in rig.results if r.path.name == "growing.pcap"]
    assert len(got) == 1, f"read {len(got)} times: {[r for _, r in got]}"
    [(at, result)] = got
    assert at >= writer.closed_at, "read before its writer closed it"
    assert result.status == "ok"
    assert result.flows == expected_events(GROWING_SOURCE)
    assert rig.stored_events() == expected_events(GOOD["nmap_vanilla.pcap"]) + result.flows


def test_retrain_every_n_files(tmp_path: Path) -> None:
    """The retrain hook runs after every N files whose events were stored (failed ones do
    not count), and the count carries over a restart. Each call runs the real anomaly
    retrain on the rig's store (tests/anomaly tests what it decides)."""
    rig = make_rig(tmp_path, dataclasses.replace(FAST, retrain_every_files=2))
    retrain = RecordingRetrain(rig.cfg, rig.state)
    names = ["masscan_tcp.pcap", "nmap_service.pcap", "nmap_vanilla.pcap", "iodine.pcap"]
    copy_good(rig.folder, names[:3])
    (rig.folder / "bad.pcap").write_text("not a capture")
    rig.build(poll=True, retrain=retrain).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert [c.files for c in retrain.calls] == [2]
    assert "2 files" in retrain.calls[0].reason
    last = rig.state().last_retrain
    assert last is not None and last["files"] == 2 and isinstance(last["accepted"], bool)
    assert last["reason"].split(":")[0] in ("swap", "skip", "refuse"), last
    assert last["accepted"] == last["reason"].startswith("swap")

    copy_good(rig.folder, names[3:])  # the 4th analysed file, after a restart
    rig.build(poll=True, retrain=retrain).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert [c.files for c in retrain.calls] == [2, 4]
    saved = json.loads(rig.state().path.read_text())
    assert saved["last_retrain"]["files"] == 4 and saved["files_at_last_retrain"] == 4


def test_file_identity_and_writer_check(tmp_path: Path) -> None:
    """A capture is known by its content (not its name or inode); a file open for writing
    is seen as such through the lease check, and not once it is closed."""
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    shutil.copyfile(GOOD["iodine.pcap"], a)
    shutil.copyfile(GOOD["iodine.pcap"], b)
    os.utime(b, (1, 1))
    assert file_key(a, a.stat().st_size) == file_key(b, b.stat().st_size)
    shutil.copyfile(GOOD["masscan_tcp.pcap"], b)
    assert file_key(a, a.stat().st_size) != file_key(b, b.stat().st_size)
    with open(a, "ab"):
        assert held_for_writing(a)
    with open(a, "rb"):
        assert not held_for_writing(a)


def test_inotify_is_available_here(tmp_path: Path) -> None:
    """The inotify mode tests would silently poll if it were not."""
    assert inotify_unavailable(tmp_path) is None


def test_killed_between_commit_and_state_save(tmp_path: Path) -> None:
    """The events of a file and the row naming it are one transaction; the state file is
    written after. A state file one file behind (a kill between the two) must not make
    the restart store that file again: it is counted from the store's row instead."""
    rig = make_rig(tmp_path)
    first = copy_good(rig.folder, ["nmap_service.pcap"])
    rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    behind = rig.state().path.read_bytes()
    second = copy_good(rig.folder, ["iodine.pcap"])
    rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    after = dict(rig.state().counters)

    rig.state().path.write_bytes(behind)  # as if killed right after the commit
    rig.results.clear()
    rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert [(r.path.name, r.status) for _, r in rig.results] == [("iodine.pcap", "known")]
    assert rig.stored_events() == first + second
    assert rig.state().counters == after


def test_a_file_that_changes_while_read_is_read_again(tmp_path: Path) -> None:
    """A writer the checks cannot see (another host on a share) appends while the file is
    being analysed: that read is thrown away, and the file is read again once settled."""
    rig = make_rig(tmp_path)
    header, records = pcap_records(GROWING_SOURCE)
    half = len(records) // 2
    target = rig.folder / "shared.pcap"
    target.write_bytes(header + b"".join(records[:half]))
    real = rig.analyse
    calls: list[int] = []

    def analyse_while_appended(path: Path) -> Analysis:
        calls.append(path.stat().st_size)
        got = real(path)
        if len(calls) == 1:
            with open(path, "ab") as f:
                f.write(b"".join(records[half:]))
        return got

    rig.analyse = analyse_while_appended
    results = rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert len(calls) == 2
    assert [(r.path.name, r.status) for r in results] == [("shared.pcap", "ok")]
    assert rig.stored_events() == results[0].flows == expected_events(GROWING_SOURCE)
