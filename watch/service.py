"""``mld watch run DIR``: capture files dropped into a folder, analysed once each.

The loop: find capture files (inotify, or a scan every ``poll_interval_s``), wait until
each is finished (watch/readiness.py), know it by its content (watch/state.py), run it
through the analyser it is given (watch/wiring.py: the whole offline detection path,
detector.analysis.scored_events), store its events in the RAG store, record it in the
state file, and every ``retrain_every_files`` files call the retrain hook it is given
(wiring: the anomaly model, trained on the store's recent events).

**One transaction per file.** A file's events are collected, then written in one SQLite
transaction together with a ``watch:<key>`` meta row naming the file; the state file is
written after. A watcher killed between the two finds the meta row at restart and counts
the file as done instead of storing it twice; killed before the commit, it stored nothing
and reads the file again. (A file's events are held in memory until the commit, ~1 KB
per flow: rotate captures to a size the host can hold, as ``tcpdump -C/-G`` does.)

**Safe intake.** Whoever can drop files into the folder must not make the watcher (often
root) read, write or move anything else. A file is opened once, relative to the folder's
descriptor, with ``O_NOFOLLOW|O_NONBLOCK`` (a link is not followed, a FIFO cannot block),
``fstat``-ed, and read only if it is a regular file owned by root, the watcher's user or
one of ``allowed_owners``; otherwise it is *refused* (counted, logged, left where it is).
Everything after that (the content key, the analysis, the "changed while read" check)
uses that descriptor: the analyser is handed a link, in a private folder, to
``/proc/self/fd/N``, never the name again. The failed folder is opened once at start
(``O_NOFOLLOW``) and must be outside the watched folder (default: beside the state
file); files are renamed into it relative to both folders' descriptors and the reason
file is created ``O_EXCL|O_NOFOLLOW``, so neither a planted link nor a swapped folder
redirects a write.

**A file that cannot be read** is moved to ``failed_dir`` with ``<name>.reason.json``.
A *truncated* capture (the engine stops at a cut record) keeps the flows read up to the
cut: they are stored, as tcpdump and Suricata would analyse them, and the file is still
moved aside and counted as ``partial``, so the operator sees it was cut. A file that
yields nothing (not a capture, unsupported link type, cut inside its header) stores
nothing and counts as ``failed``. Moving a failed file back into the folder tries it
again; a partial one is remembered (its events are stored).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from base.errors import WatchError
from proto.events_pb2 import ScoredEvent
from rag.indexed_store import RagStore
from watch.config import WatchConfig
from watch.inotify import (
    IN_CLOSE_WRITE,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
    InotifyError,
    inotify_unavailable,
)
from watch.readiness import Pending, held_for_writing
from watch.state import FileEntry, WatchState, file_key

__all__ = [
    "CAPTURE_SUFFIXES",
    "Analysis",
    "FileResult",
    "RetrainHook",
    "RetrainResult",
    "Watcher",
]

log = logging.getLogger(__name__)

CAPTURE_SUFFIXES = (".pcap", ".pcapng")
_LABEL_SUSPICIOUS = 2
_MAX_WAIT_S = 0.5  # longest sleep: a stop request is seen within this
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symbolic link",
}


def _stat_id(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class _Refused(Exception):
    """A file the watcher will not read (a link, not a regular file, a stranger's)."""


def allowed_uids(owners: tuple[str, ...]) -> frozenset[int] | None:
    """Root, this process's user and ``owners`` (names or uids); None: anyone ("*")."""
    if "*" in owners:
        return None
    uids = {0, os.geteuid()}
    for owner in owners:
        if owner.isdigit():
            uids.add(int(owner))
            continue
        try:
            uids.add(pwd.getpwnam(owner).pw_uid)
        except KeyError:
            raise WatchError(
                f"watch.allowed_owners names {owner!r}, which is no user on this host: "
                "give a user name or a uid"
            ) from None
    return frozenset(uids)


def default_failed_dir(state_file: Path) -> Path:
    """Beside the state file: <state file without its suffix>.failed."""
    return state_file.with_name(state_file.stem + ".failed")


class RetrainResult(Protocol):
    """What a retrain reports: swapped in or not, why, the new version."""

    @property
    def accepted(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def version(self) -> str | None: ...


RetrainHook = Callable[[str], RetrainResult]


@dataclass
class Analysis:
    """The events of one capture file, and the read error that stopped it, if any."""

    events: list[ScoredEvent]
    error: str = ""  # why the read stopped early (or never started); "" when read whole
    error_kind: str = ""  # corrupt, unsupported_link_type, error


@dataclass(frozen=True)
class FileResult:
    """What became of one file."""

    path: Path
    status: str  # ok, partial, failed, known, refused
    flows: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""
    moved_to: Path | None = None


class Watcher:
    """The watch folder's loop; one thread (the SQLite connection is its own)."""

    def __init__(
        self,
        folder: Path,
        cfg: WatchConfig,
        store: RagStore,
        state: WatchState,
        *,
        analyse: Callable[[Path], Analysis],
        retrain: RetrainHook | None,
        failed_dir: Path | None = None,
        poll: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_file: Callable[[FileResult], None] | None = None,
    ) -> None:
        self.folder = folder
        self.cfg = cfg
        self.rag_cfg = store.cfg  # when to save the store's indexes
        self.store = store
        self.state = state
        self.analyse = analyse
        self.retrain = retrain
        self.failed_dir = (failed_dir or default_failed_dir(state.path)).resolve()
        if self.failed_dir.is_relative_to(folder.resolve()):
            raise WatchError(
                f"watch.failed_dir {self.failed_dir} is inside the watched folder {folder}: "
                "whoever drops files there could plant links in it or swap it; choose a "
                "folder outside it (empty: beside the state file)"
            )
        self._owners = allowed_uids(cfg.allowed_owners)
        self._folder_fd = -1
        self._failed_fd = -1
        # Private folder of the links handed to the analyser, beside the state file (a
        # watcher killed mid-file leaves it; the next start empties it).
        self._links = state.path.with_name(state.path.stem + ".reading")
        self._links_made = False
        self.clock = clock
        self.on_file = on_file
        self.pending: dict[Path, Pending] = {}
        self.mode = "poll"  # or inotify, once started
        self.started = threading.Event()  # set once the folder's first scan is done
        self.why_poll = "--poll" if poll else ""
        self._want_inotify = not poll
        self._inotify: Inotify | None = None
        # path -> (size, mtime, inode) of files that need nothing more while unchanged:
        # analysed (from the state at start), duplicates of analysed ones, unmovable failures.
        self._known: dict[str, tuple[int, int, int]] = {
            e.path: (e.size, e.mtime_ns, e.ino) for e in state.files.values()
        }
        self._stop = threading.Event()
        self._next_scan = 0.0
        self._unsaved_since: float | None = None
        self._unsaved_events = 0
        self.results: deque[FileResult] = deque(maxlen=10000)  # the most recent
        self.unreadable = 0  # files of this run that failed or were cut

    # ----------------------------------------------------------------- control
    def request_stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, int]:
        return {
            **self.state.counters,
            "pending": len(self.pending),
            "files_at_last_retrain": self.state.files_at_last_retrain,
        }

    # -------------------------------------------------------------- discovery
    def _start(self) -> None:
        if not self.folder.is_dir():
            raise WatchError(f"{self.folder} is not a folder: pass the folder to watch")
        self._folder_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.failed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._failed_fd = os.open(self.failed_dir, _OPEN_DIR)
        except OSError as exc:
            raise WatchError(
                f"cannot open the failed folder {self.failed_dir} ({exc.strerror}): it must "
                "be a folder (not a link) the watcher can write; set watch.failed_dir"
            ) from exc
        self._clear_links()
        self._links.mkdir(mode=0o700, parents=True)
        self._links_made = True
        if self._want_inotify:
            why = inotify_unavailable(self.folder)
            if why is None:
                try:
                    self._inotify = Inotify()
                    self._inotify.add(self.folder)
                    self.mode = "inotify"
                except InotifyError as exc:
                    why = str(exc)
                    self._close_inotify()
            if why:
                self.why_poll = why
                log.warning(
                    "inotify unavailable (%s): polling every %.1f s instead",
                    why,
                    self.cfg.poll_interval_s,
                )
        self._scan(self.folder)
        self._next_scan = self.clock() + self.cfg.poll_interval_s
        self.started.set()

    def _close_fds(self) -> None:
        for name in ("_folder_fd", "_failed_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        if self._links_made:
            self._clear_links()
            self._links_made = False

    def _clear_links(self) -> None:
        if self._links.is_symlink():
            self._links.unlink()
        elif self._links.exists():
            shutil.rmtree(self._links)

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def _hidden_or_failed(self, path: Path) -> bool:
        return path.name.startswith(".") or path == self.failed_dir

    def _scan(self, folder: Path) -> None:
        """Every capture file under ``folder`` becomes pending (unless known); with
        inotify and ``recursive``, every subfolder is watched."""
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc)
            return
        for entry in entries:
            path = Path(entry.path)
            if self._hidden_or_failed(path):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if self.cfg.recursive:
                        self._watch_subfolder(path)
                        self._scan(path)
                elif entry.name.endswith(CAPTURE_SUFFIXES):  # links, FIFOs: refused
                    self._note(path, closed=False)
            except OSError:
                continue

    def _watch_subfolder(self, path: Path) -> None:
        if self._inotify is None:
            return
        try:
            self._inotify.add(path)
        except InotifyError as exc:  # e.g. max_user_watches: poll everything instead
            log.warning("inotify: %s; polling every %.1f s instead", exc, self.cfg.poll_interval_s)
            self.why_poll = str(exc)
            self.mode = "poll"
            self._close_inotify()

    def _note(self, path: Path, *, closed: bool) -> None:
        """A capture file appeared or changed: track it until it is ready."""
        if self._hidden_or_failed(path) or not path.name.endswith(CAPTURE_SUFFIXES):
            return
        try:
            st = path.lstat()
        except OSError:
            self.pending.pop(path, None)
            return
        if path not in self.pending and self._known.get(str(path)) == _stat_id(st):
            return  # handled already, unchanged
        now = self.clock()
        got = self.pending.get(path)
        if got is None:
            got = self.pending[path] = Pending(st.st_size, st.st_mtime_ns, now)
        else:
            got.update(st.st_size, st.st_mtime_ns, now)
        if closed:
            got.closed = True

    def _events(self, timeout: float) -> None:
        """Wait up to ``timeout`` for inotify events (or sleep, when polling)."""
        if self._inotify is None:
            self._stop.wait(timeout)
            return
        for ev in self._inotify.read(timeout):
            if ev.mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed: scanning %s again", self.folder)
                self._scan(self.folder)
            elif ev.is_dir:
                if self.cfg.recursive and not self._hidden_or_failed(ev.path):
                    self._watch_subfolder(ev.path)
                    self._scan(ev.path)
            elif ev.path == self.folder:
                continue  # the folder itself went away (IN_DELETE_SELF): the scan says so
            else:
                self._note(ev.path, closed=bool(ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO)))

    def _ready(self) -> tuple[list[Path], float]:
        """Pending files that are finished (oldest first), and how long until the next
        might be."""
        now = self.clock()
        ready: list[tuple[int, Path]] = []
        wait = self.cfg.poll_interval_s
        for path, p in list(self.pending.items()):
            try:
                st = path.lstat()
            except OSError:
                del self.pending[path]
                continue
            p.update(st.st_size, st.st_mtime_ns, now)
            left = p.settled(now, self.cfg.settle_s, self.cfg.closed_settle_s)
            if left > 0:
                wait = min(wait, left)
            elif held_for_writing(path):
                log.debug("%s: still open for writing", path)
                p.closed = False
                wait = min(wait, max(self.cfg.settle_s, 0.05))
            else:
                ready.append((p.mtime_ns, path))
        return [path for _, path in sorted(ready)], wait

    # --------------------------------------------------------------- the loop
    def run(
        self, *, once: bool = False, follow: Callable[[], object] | None = None
    ) -> list[FileResult]:
        """Watch until stopped (``once``: until every file found is done); returns what
        became of the files handled (the last 10000). ``follow`` is called between files
        and waits (the control plane's poll)."""
        try:
            self._start()
        except BaseException:
            self._close_inotify()
            self._close_fds()
            raise
        log.info(
            "watching %s (%s%s); state %s; failed files to %s",
            self.folder,
            self.mode,
            f": {self.why_poll}" if self.mode == "poll" and self.why_poll else "",
            self.state.path,
            self.failed_dir,
        )
        try:
            self._maybe_retrain()  # a retrain that was due when the last run stopped
            while not self._stop.is_set():
                if follow is not None:
                    follow()
                if self.mode == "poll" and self.clock() >= self._next_scan:
                    self._scan(self.folder)
                    self._next_scan = self.clock() + self.cfg.poll_interval_s
                ready, wait = self._ready()
                for path in ready:
                    if self._stop.is_set():
                        break
                    self._handle(path)
                if ready:
                    continue
                if once and not self.pending:
                    break
                self._save_indexes(force=False)
                if self.mode == "poll":
                    wait = min(wait, max(0.0, self._next_scan - self.clock()))
                self._events(min(max(wait, 0.01), _MAX_WAIT_S))
        finally:
            self._save_indexes(force=True)
            self.state.save()
            self._close_inotify()
            self._close_fds()
        return list(self.results)

    def _parent_fd(self, path: Path) -> int:
        """A descriptor of ``path``'s folder, reached from the watched folder's descriptor
        one component at a time without following links (a subfolder swapped for a link
        is not entered). The caller closes it."""
        fd = os.dup(self._folder_fd)
        try:
            for part in path.parent.relative_to(self.folder).parts:
                sub = os.open(part, _OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self, parent: int, name: str) -> tuple[int, os.stat_result]:
        """The capture file, opened once: a regular file of an allowed owner, or _Refused."""
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Refused("a symbolic link: links are not followed") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
                raise _Refused(f"{kind}, not a regular file")
            if self._owners is not None and st.st_uid not in self._owners:
                try:
                    who = f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
                except KeyError:
                    who = f"uid {st.st_uid}"
                raise _Refused(
                    f"owned by {who}, not root or the watcher's user: add it to "
                    "watch.allowed_owners to read its files"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _handle(self, path: Path) -> None:
        self.pending.pop(path, None)
        try:
            parent = self._parent_fd(path)
        except OSError as exc:
            self._refuse(path, f"its folder cannot be opened without following a link ({exc})")
            return
        try:
            try:
                fd, st = self._open(parent, path.name)
            except _Refused as why:
                self._refuse(path, str(why))
                return
            except OSError as exc:
                log.info("%s: gone before it was read (%s)", path, exc.strerror)
                return
            try:
                self._handle_open(path, parent, fd, st)
            finally:
                os.close(fd)
        finally:
            os.close(parent)

    def _refuse(self, path: Path, why: str) -> None:
        """Not read, not moved (it may not be ours to move); not looked at again until it
        changes."""
        with contextlib.suppress(OSError):
            self._known[str(path)] = _stat_id(path.lstat())
        log.warning("%s: refused, not read: %s", path, why)
        self.state.counters["files_refused"] += 1
        self.state.save()
        self.unreadable += 1
        done = FileResult(path, "refused", reason=why)
        self.results.append(done)
        if self.on_file is not None:
            self.on_file(done)

    def _handle_open(self, path: Path, parent: int, fd: int, st: os.stat_result) -> None:
        key = file_key(fd, st.st_size)
        entry = self.state.files.get(key)
        if entry is not None and entry.status != "failed":
            log.info("%s: the same capture as %s, analysed already; skipped", path, entry.path)
            self._known[str(path)] = _stat_id(st)
            return
        stored = self.store.store.meta(f"watch:{key}")
        if stored is not None:
            self._recover(path, parent, fd, st, key, stored)
            return
        started = time.perf_counter()
        result = self._analyse(path, fd)
        if _stat_id(os.fstat(fd)) != _stat_id(st):
            # a writer the checks could not see (another host): nothing stored
            log.warning("%s: changed while it was read; read again once it settles", path)
            self._note(path, closed=False)
            return
        events = result.events
        status = "ok" if not result.error else "partial" if events else "failed"
        # Per flow: a long flow comes as interim records and its final record (one
        # flow_id); the store keeps one row per flow and a flow alerts once.
        flows = sum(1 for ev in events if not ev.record.interim)
        alerted: dict[int, str] = {}
        for ev in events:
            if ev.verdict.label >= _LABEL_SUSPICIOUS:
                alerted.setdefault(ev.record.flow_id, ev.verdict.family)
        alerts = Counter(alerted.values())
        if status != "failed":
            record = {
                "path": str(path),
                "status": status,
                "events": flows,
                "alerts": dict(alerts),
                "at": time.time(),
            }
            self.store.ingest(events, "watch", meta={f"watch:{key}": json.dumps(record)})
            self._unsaved_events += len(events)
            if self._unsaved_since is None:
                self._unsaved_since = self.clock()
        seconds = time.perf_counter() - started
        moved = None
        if status != "ok":
            moved = self._move_aside(path, parent, fd, st, key, status, result, flows)
        final = moved or path
        self._remember(
            key,
            FileEntry(
                str(final), st.st_size, st.st_mtime_ns, st.st_ino, status, flows, time.time()
            ),
        )
        self._count(status, flows, sum(alerts.values()))
        self.state.prune(self.cfg.remember_files)
        self.state.save()
        done = FileResult(path, status, flows, dict(alerts), seconds, result.error, moved)
        self._log(done)
        self.unreadable += status != "ok"
        self.results.append(done)
        if self.on_file is not None:
            self.on_file(done)
        if status != "failed":
            self._maybe_retrain()

    def _analyse(self, path: Path, fd: int) -> Analysis:
        """Run the analyser on the open file, never on its name again: it gets a link
        named as the file, in a folder only this process can write, to /proc/self/fd/N
        (the reader opens the very file that was checked; its flows keep the file's name
        as their observation point)."""
        link = self._links / path.name
        link.unlink(missing_ok=True)
        link.symlink_to(f"/proc/self/fd/{fd}")
        try:
            result = self.analyse(link)
        finally:
            link.unlink(missing_ok=True)
        if str(link) in result.error:
            result.error = result.error.replace(str(link), str(path))
        return result

    def _recover(
        self, path: Path, parent: int, fd: int, st: os.stat_result, key: str, stored: str
    ) -> None:
        """The store holds this file's events (the last run stopped before saving its
        state): count it from the meta row, do not store it again."""
        record = json.loads(stored)
        status = str(record.get("status", "ok"))
        events = int(record.get("events", 0))
        alerts = {str(k): int(v) for k, v in dict(record.get("alerts", {})).items()}
        log.info(
            "%s: its %d events are in the store already (stored before a restart)", path, events
        )
        moved = None
        if status != "ok":
            moved = self._move_aside(
                path,
                parent,
                fd,
                st,
                key,
                status,
                Analysis([], "read stopped early", "corrupt"),
                events,
            )
        self._remember(
            key,
            FileEntry(
                str(moved or path),
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                status,
                events,
                time.time(),
            ),
        )
        self._count(status, events, sum(alerts.values()))
        self.state.save()
        done = FileResult(path, "known", events, alerts, 0.0, "", moved)
        self.results.append(done)
        if self.on_file is not None:
            self.on_file(done)
        self._maybe_retrain()

    def _remember(self, key: str, entry: FileEntry) -> None:
        self.state.record(key, entry)
        self._known[entry.path] = (entry.size, entry.mtime_ns, entry.ino)

    def _count(self, status: str, events: int, alerts: int) -> None:
        c = self.state.counters
        c[f"files_{status}"] += 1
        c["flows"] += events
        c["events"] += events
        c["alerts"] += alerts

    def _reserve(self, path: Path, key: str) -> tuple[str, int]:
        """A name free in the failed folder, and its reason file created new (O_EXCL:
        an existing file or a planted link there is never written through)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for n in range(100):
            name = path.name if n == 0 else f"{path.stem}-{stamp}-{key[:8]}-{n}{path.suffix}"
            try:
                os.lstat(name, dir_fd=self._failed_fd)
                continue  # taken
            except FileNotFoundError:
                pass
            try:
                return name, os.open(
                    f"{name}.reason.json", _CREATE_NEW, 0o600, dir_fd=self._failed_fd
                )
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, "no free name (100 tried)")

    def _move_aside(
        self,
        path: Path,
        parent: int,
        fd: int,
        st: os.stat_result,
        key: str,
        status: str,
        result: Analysis,
        kept: int,
    ) -> Path | None:
        """Move a file that could not be read (whole) to the failed folder, with why:
        renamed relative to the two folders' descriptors (copied from the open file, then
        unlinked, when they are on different filesystems)."""
        try:
            name, sidecar = self._reserve(path, key)
            reason = {
                "file": str(path),
                "status": status,
                "reason": result.error_kind,
                "message": result.error,
                "events_stored": kept,
                "what_was_done": (
                    f"the {kept} flows read before the error were stored; the rest of "
                    "the file was not read"
                    if status == "partial"
                    else "nothing was stored; move the file back into the folder to try again"
                ),
                "key": key,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with os.fdopen(sidecar, "w", encoding="utf-8") as f:
                f.write(json.dumps(reason, indent=1) + "\n")
            try:
                now = os.lstat(path.name, dir_fd=parent)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(errno.ESTALE, "the name now holds another file")
                self._move(path.name, parent, fd, name)
            except OSError:
                os.unlink(f"{name}.reason.json", dir_fd=self._failed_fd)
                raise
            return self.failed_dir / name
        except OSError as exc:
            log.error(
                "%s: cannot move it to %s (%s); it stays where it is and is not "
                "tried again until it changes",
                path,
                self.failed_dir,
                exc,
            )
            return None

    def _move(self, src: str, parent: int, fd: int, name: str) -> None:
        """``src`` (in ``parent``) to ``name`` in the failed folder: renamed, or across
        filesystems copied from ``fd`` (the file that was read) into a new file, then
        unlinked."""
        try:
            os.rename(src, name, src_dir_fd=parent, dst_dir_fd=self._failed_fd)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        out = os.open(name, _CREATE_NEW, 0o600, dir_fd=self._failed_fd)
        try:
            offset = 0
            while chunk := os.pread(fd, 1 << 20, offset):
                os.write(out, chunk)
                offset += len(chunk)
            os.fsync(out)
        except OSError:
            os.unlink(name, dir_fd=self._failed_fd)
            raise
        finally:
            os.close(out)
        os.unlink(src, dir_fd=parent)

    def _log(self, r: FileResult) -> None:
        alerts = " ".join(f"{k}={v}" for k, v in sorted(r.alerts.items())) or "none"
        where = f"; moved to {r.moved_to}" if r.moved_to else ""
        if r.status == "ok":
            log.info("%s: %d flows, alerts %s, %.2f s", r.path.name, r.flows, alerts, r.seconds)
        elif r.status == "partial":
            log.warning(
                "%s: %d flows (read up to an error: %s), alerts %s, %.2f s%s",
                r.path.name,
                r.flows,
                r.reason,
                alerts,
                r.seconds,
                where,
            )
        else:
            log.warning("%s: failed, nothing stored (%s)%s", r.path.name, r.reason, where)

    # ---------------------------------------------------------- store, retrain
    def _save_indexes(self, *, force: bool) -> None:
        if self._unsaved_since is None:
            return
        due = (
            force
            or self._unsaved_events >= self.rag_cfg.save_every_events
            or self.clock() - self._unsaved_since >= self.rag_cfg.save_every_s
        )
        if due:
            self.store.save()
            self._unsaved_since = None
            self._unsaved_events = 0

    def _maybe_retrain(self) -> None:
        every = self.cfg.retrain_every_files
        done = self.state.files_analysed
        if self.retrain is None or every <= 0 or done - self.state.files_at_last_retrain < every:
            return
        why = f"mld watch {self.folder}: {done} files analysed"
        started = time.perf_counter()
        outcome: dict[str, object]
        try:
            got = self.retrain(why)
            outcome = {
                "accepted": bool(got.accepted),
                "reason": str(got.reason),
                "version": got.version,
            }
        except Exception as exc:  # a failed retrain must not stop the watch
            outcome = {"accepted": False, "reason": f"retrain failed: {exc}", "version": None}
        took = time.perf_counter() - started
        self.state.last_retrain = {
            "at": time.time(),
            "files": done,
            "seconds": round(took, 3),
            **outcome,
        }
        self.state.files_at_last_retrain = done
        self.state.save()
        log.info(
            "anomaly model retrain after %d files: %s (%s) in %.1f s",
            done,
            "accepted" if outcome["accepted"] else "not accepted",
            outcome["reason"],
            took,
        )
