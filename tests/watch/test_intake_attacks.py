"""Attacks on the watch folder's file intake (issue 19, finding 4), performed against the
real Watcher on real files, symlinks, FIFOs and a file owned by another uid.

Whoever may drop files into the watched folder (an uploader, a sync job, a local user of a
shared drop folder) must not be able to make the watcher, which often runs as root,
write, move or read anything outside what it was given. Each test below did what its
docstring says to the watcher of ``main`` before the fix (and failed); see the report of
issue 19 for the runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from base.errors import WatchError
from tests.support import wait_for
from tests.watch.support import GOOD, copy_good, expected_events, make_rig
from watch.service import Analysis

VICTIM_TEXT = "root's file: must not change\n"


def _victim(tmp: Path) -> Path:
    victim = tmp / "outside" / "victim.conf"
    victim.parent.mkdir()
    victim.write_text(VICTIM_TEXT)
    return victim


def test_planted_reason_json_symlink_in_the_old_failed_folder(tmp_path: Path) -> None:
    """Attack: the failed folder was ``DIR/.failed``, inside the drop folder. The attacker
    plants ``DIR/.failed/notes.pcap.reason.json -> /some/victim`` and drops a file
    ``notes.pcap`` that is not a capture: the watcher wrote its reason file through the
    link, overwriting the victim (as root: any file on the host). Now the failed folder
    is outside the watched folder by default and the planted link is never used."""
    rig = make_rig(tmp_path)
    victim = _victim(tmp_path)
    planted = rig.folder / ".failed"
    planted.mkdir()
    (planted / "notes.pcap.reason.json").symlink_to(victim)
    (rig.folder / "notes.pcap").write_text("not a capture\n")

    watcher = rig.build(poll=True)
    results = watcher.run(once=True)
    rig.store.close()  # type: ignore[union-attr]

    assert victim.read_text() == VICTIM_TEXT
    [result] = results
    assert result.status == "failed" and result.moved_to is not None
    assert result.moved_to.parent == watcher.failed_dir
    assert not watcher.failed_dir.is_relative_to(rig.folder)
    assert (watcher.failed_dir / "notes.pcap.reason.json").is_file()
    assert not (watcher.failed_dir / "notes.pcap.reason.json").is_symlink()


def test_planted_reason_json_symlink_in_the_failed_folder(tmp_path: Path) -> None:
    """Attack: the same planted ``<name>.reason.json`` link, in a failed folder the
    attacker can write (an operator's choice, e.g. a shared one). The side file is now
    created with O_EXCL|O_NOFOLLOW: the link is left alone, the victim unchanged, and the
    reason goes to a new name beside the moved file."""
    rig = make_rig(tmp_path)
    victim = _victim(tmp_path)
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "notes.pcap.reason.json").symlink_to(victim)
    (rig.folder / "notes.pcap").write_text("not a capture\n")

    results = rig.build(poll=True, failed_dir=failed).run(once=True)
    rig.store.close()  # type: ignore[union-attr]

    assert victim.read_text() == VICTIM_TEXT
    assert (failed / "notes.pcap.reason.json").is_symlink()  # untouched
    [result] = results
    assert result.moved_to is not None and result.moved_to.parent == failed
    assert result.moved_to.name != "notes.pcap"  # a fresh name: the planted one is taken
    sidecar = result.moved_to.with_name(result.moved_to.name + ".reason.json")
    assert sidecar.is_file() and not sidecar.is_symlink()
    assert '"status": "failed"' in sidecar.read_text()


def test_failed_folder_swapped_for_a_symlink(tmp_path: Path) -> None:
    """Attack: ``DIR/.failed`` replaced by a link to a folder of the attacker's choice
    (``/etc/cron.d``, say): the watcher moved the attacker's files there. Then, with a
    failed folder outside: the folder swapped for a link while the watcher runs. The
    watcher now opens its failed folder once, without following links, and moves files
    relative to that descriptor: nothing lands in the attacker's folder."""
    rig = make_rig(tmp_path)
    target = tmp_path / "outside" / "cron.d"
    target.mkdir(parents=True)
    (rig.folder / ".failed").symlink_to(target)
    (rig.folder / "job.pcap").write_text("* * * * * root sh -c 'id > /tmp/pwned'\n")
    watcher = rig.build(poll=True)
    watcher.run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert list(target.iterdir()) == []
    assert (watcher.failed_dir / "job.pcap").is_file()

    failed = tmp_path / "failed"
    failed.mkdir()
    rig.results.clear()
    rig.start(poll=False, failed_dir=failed)
    try:
        failed.rename(tmp_path / "failed-real")
        failed.symlink_to(target)
        (rig.folder / "job2.pcap").write_text("* * * * * root sh -c 'id > /tmp/pwned'\n")
        wait_for(lambda: rig.done("job2.pcap"), 20, "the bad file to be handled")
    finally:
        rig.stop()
    assert list(target.iterdir()) == []
    assert (tmp_path / "failed-real" / "job2.pcap").is_file()
    assert (tmp_path / "failed-real" / "job2.pcap.reason.json").is_file()


def test_a_fifo_does_not_hang_the_watcher(tmp_path: Path) -> None:
    """Attack: ``mkfifo x.pcap`` (and a ``y.pcap`` link to a FIFO elsewhere) in the drop
    folder: the watcher opened it to hash it and blocked forever, so no capture was
    analysed again. Files are now opened O_NONBLOCK|O_NOFOLLOW and must be regular
    files: the good capture dropped after the FIFOs is analysed."""
    rig = make_rig(tmp_path)
    fifo = rig.folder / "x.pcap"
    elsewhere = tmp_path / "fifo"
    watcher = rig.start(poll=False)
    try:
        os.mkfifo(elsewhere)
        os.mkfifo(fifo)
        (rig.folder / "y.pcap").symlink_to(elsewhere)
        # Both seen (inotify IN_CREATE), then taken up to be read (the old watcher blocked
        # there); only then the good capture, so it cannot be read before them.
        wait_for(lambda: {fifo, rig.folder / "y.pcap"} <= set(watcher.pending), 10, "FIFOs seen")
        wait_for(lambda: not watcher.pending, 10, "the FIFOs taken up (one blocks the watcher)")
        want = copy_good(rig.folder, ["nmap_vanilla.pcap"])
        wait_for(lambda: rig.done("nmap_vanilla.pcap"), 30, "the capture after the FIFO")
    finally:
        for f in (fifo, elsewhere):  # a watcher blocked in open() is released
            with contextlib.suppress(OSError):  # ENXIO: no reader waiting, none blocked
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        rig.stop()
    assert [r.status for r in rig.done("nmap_vanilla.pcap")] == ["ok"]
    assert rig.stored_events() == want
    assert [r.status for r in rig.done("x.pcap") + rig.done("y.pcap")] == ["refused"] * 2
    assert fifo.exists()  # not ours to move: left where it is


def test_a_link_to_another_users_capture_is_not_read(tmp_path: Path) -> None:
    """Attack: a local user who cannot read root's capture links it into the drop folder
    (``stolen.pcap -> /root/private.pcap``), or drops a capture of someone else's
    (``other.pcap`` owned by uid 65534): the watcher, as root, read both and stored their
    flows where the attacker could ask about them (``mld rag ask``). Now links are not
    followed and a file must be owned by root or the watcher's user
    (``watch.allowed_owners`` adds others): nothing is stored."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    rig = make_rig(tmp_path)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "private.pcap"
    shutil.copyfile(GOOD["iodine.pcap"], secret)
    (rig.folder / "stolen.pcap").symlink_to(secret)
    other = rig.folder / "other.pcap"
    shutil.copyfile(GOOD["masscan_tcp.pcap"], other)
    os.chown(other, 65534, 65534)

    watcher = rig.build(poll=True)
    results = watcher.run(once=True)
    rig.store.close()  # type: ignore[union-attr]

    assert rig.stored_events() == 0
    assert [r.status for r in results if r.status != "refused"] == []
    assert watcher.state.counters["files_refused"] >= 1
    assert secret.exists() and other.exists()  # neither moved

    # The operator allows that owner: the same file is read.
    allow = dataclasses.replace(rig.cfg.watch, allowed_owners=("65534",))
    rig.cfg = dataclasses.replace(rig.cfg, watch=allow)
    results = rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert {(r.path.name, r.status) for r in results} == {
        ("other.pcap", "ok"),
        ("stolen.pcap", "refused"),  # still a link
    }
    assert rig.stored_events() == expected_events(GOOD["masscan_tcp.pcap"])


def test_the_file_read_is_the_file_checked(tmp_path: Path) -> None:
    """Attack (TOCTOU): the name is swapped for a link to a private capture between the
    watcher's checks and its read. The reader used to be handed the name again and read
    whatever it then pointed to; it now reads the descriptor that was checked."""
    rig = make_rig(tmp_path)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "private.pcap"
    shutil.copyfile(GOOD["iodine.pcap"], secret)
    name = rig.folder / "mine.pcap"
    shutil.copyfile(GOOD["nmap_vanilla.pcap"], name)
    real = rig.analyse
    swapped = threading.Event()

    def swap_then_read(path: Path) -> Analysis:
        if not swapped.is_set():
            swapped.set()
            name.rename(tmp_path / "mine-away.pcap")
            name.symlink_to(secret)
        return real(path)

    rig.analyse = swap_then_read
    results = rig.build(poll=True).run(once=True)
    rig.store.close()  # type: ignore[union-attr]
    assert swapped.is_set()
    assert rig.stored_events() == expected_events(GOOD["nmap_vanilla.pcap"])  # not the secret
    # the file checked was read; the link now at its name, if the scan saw it, is refused
    assert results[0].status == "ok"
    assert [r.status for r in results[1:]] in ([], ["refused"])
    assert results[0].flows == expected_events(GOOD["nmap_vanilla.pcap"])


def test_a_failed_folder_inside_the_watched_one_is_refused(tmp_path: Path) -> None:
    """Whoever writes the drop folder would control the failed folder: refused, with what
    to do."""
    rig = make_rig(tmp_path)
    with pytest.raises(WatchError, match="failed_dir"):
        rig.build(poll=True, failed_dir=rig.folder / "failed")
    rig.store.close()  # type: ignore[union-attr]


def test_a_failed_folder_on_another_filesystem(tmp_path: Path) -> None:
    """Not an attack: a failed folder on another filesystem (rename says EXDEV) gets the
    file copied from the descriptor that was read, then unlinked from the folder."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's")
    rig = make_rig(tmp_path)
    failed = Path(tempfile.mkdtemp(prefix="mld-watch-test-", dir=shm))
    try:
        cut = rig.folder / "cut.pcap"
        cut.write_bytes(GOOD["masscan_tcp.pcap"].read_bytes()[:50_000])
        results = rig.build(poll=True, failed_dir=failed).run(once=True)
        rig.store.close()  # type: ignore[union-attr]
        assert [(r.status, r.moved_to) for r in results] == [("partial", failed / "cut.pcap")]
        assert not cut.exists()
        assert (failed / "cut.pcap").read_bytes() == GOOD["masscan_tcp.pcap"].read_bytes()[:50_000]
        assert (failed / "cut.pcap.reason.json").is_file()
    finally:
        shutil.rmtree(failed)
