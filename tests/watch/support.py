"""Helpers for the watch folder tests: real shared captures, their expected event counts,
pcap records written slowly, a Watcher on a temp folder and store."""

from __future__ import annotations

import dataclasses
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from config import MldConfig, load_config
from detector.analysis import scored_events
from detector.scoring import Scorer, default_scorer
from rag.indexed_store import RagStore, db_path
from tests.support import SHARED_DATA
from watch.config import WatchConfig
from watch.service import Analysis, FileResult, RetrainHook, Watcher
from watch.state import WatchState, state_path
from watch.wiring import anomaly_retrain, detection_analyser

SCAN = SHARED_DATA / "pcaps/attacks/scan"
GOOD = {
    "masscan_tcp.pcap": SCAN / "masscan_tcp_0_1000.pcap",
    "nmap_service.pcap": SCAN / "nmap_80_service_detection.pcap",
    "nmap_vanilla.pcap": SCAN / "nmap_80_vanilla.pcap",
    "iodine.pcap": SHARED_DATA / "pcaps/attacks/dns_tunnel/iodine_elastic.pcap",
    "syn_reflection.pcapng": SHARED_DATA / "pcaps/attacks/ddos/amp_tcp_syn_optionally_ack.pcapng",
}
GROWING_SOURCE = SCAN / "masscan_udp_0_1000.pcap"
FAST = WatchConfig(settle_s=0.4, closed_settle_s=0.05, poll_interval_s=0.1, retrain_every_files=0)


def need_captures() -> None:
    missing = [p for p in [*GOOD.values(), GROWING_SOURCE] if not p.exists()]
    if missing:
        pytest.skip(f"needs the shared captures in {SHARED_DATA} ({missing[0]} is missing)")


@cache
def scorer() -> Scorer:
    cfg = load_config()
    return default_scorer(cfg.detector)


@cache
def expected_events(path: Path) -> int:
    """Flows (stored rows) of one capture through the same path, outside the watcher: its
    records but the interim ones, which the store folds into their flow's row."""
    batches = scored_events([path], load_config().sniffer, scorer())
    return sum(1 for b in batches for ev in b if not ev.record.interim)


def truncate(source: Path, dest: Path, at: int) -> None:
    """A copy of ``source`` cut at byte ``at`` (mid-record for the pcaps used here)."""
    dest.write_bytes(source.read_bytes()[:at])


def pcap_records(path: Path) -> tuple[bytes, list[bytes]]:
    """The global header and the records (header + data) of a classic pcap file."""
    data = path.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    records, pos = [], 24
    while pos + 16 <= len(data):
        (incl,) = struct.unpack_from(order + "I", data, pos + 8)
        records.append(data[pos : pos + 16 + incl])
        pos += 16 + incl
    return data[:24], records


@dataclass
class SlowWriter:
    """Writes a real capture record by record, holding the file open throughout, with a
    pause longer than the watcher's settle time half-way."""

    source: Path
    dest: Path
    pause_s: float
    closed_at: float | None = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowWriter:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            header, records = pcap_records(self.source)
            half = len(records) // 2
            with open(self.dest, "wb") as f:
                f.write(header)
                for i in range(0, half, 50):
                    f.write(b"".join(records[i : min(i + 50, half)]))
                    f.flush()
                    time.sleep(0.01)
                time.sleep(self.pause_s)  # stable, but still open for writing
                for i in range(half, len(records), 100):
                    f.write(b"".join(records[i : i + 100]))
                    f.flush()
                    time.sleep(0.01)
            self.closed_at = time.monotonic()
        except BaseException as exc:  # reported by the test
            self.error = exc


@dataclass
class RetrainCall:
    reason: str
    files: int


class RecordingRetrain:
    """Records when the watcher asks for a retrain, then runs the real anomaly retrain
    (anomaly.train.retrain, through the watcher's own hook) on the rig's store."""

    def __init__(self, cfg: MldConfig, state: Callable[[], WatchState]) -> None:
        self.calls: list[RetrainCall] = []
        self._state = state
        self._real: RetrainHook = anomaly_retrain(
            cfg.anomaly,
            db_path(cfg.rag, cfg.node.state_dir),
            cfg.anomaly.path(cfg.node.state_dir),
            cfg.detector.model_cache_dir or None,
        )

    def __call__(self, reason: str) -> Stub:
        self.calls.append(RetrainCall(reason, self._state().files_analysed))
        got = self._real(reason)
        return Stub(got.accepted, got.reason, got.version)


@dataclass(frozen=True)
class Stub:
    accepted: bool
    reason: str
    version: str | None


@dataclass
class Rig:
    """A watched folder, its store and state, and a Watcher built on them."""

    tmp: Path
    folder: Path
    cfg: MldConfig
    analyse: Callable[[Path], Analysis]
    results: list[tuple[float, FileResult]] = field(default_factory=list)
    store: RagStore | None = None
    watcher: Watcher | None = None
    thread: threading.Thread | None = None

    @property
    def db(self) -> Path:
        return Path(self.cfg.rag.db)

    def state(self) -> WatchState:
        assert self.watcher is not None
        return self.watcher.state

    def build(
        self, *, poll: bool, retrain: RetrainHook | None = None, failed_dir: Path | None = None
    ) -> Watcher:
        self.store = RagStore(self.db, self.cfg.rag)
        self.store.open_indexes()
        path = state_path(self.folder, "", self.cfg.node.state_dir)
        self.watcher = Watcher(
            self.folder,
            self.cfg.watch,
            self.store,
            WatchState.load(path, self.folder),
            analyse=self.analyse,
            retrain=retrain,
            failed_dir=failed_dir,
            poll=poll,
            on_file=lambda r: self.results.append((time.monotonic(), r)),
        )
        return self.watcher

    def start(
        self, *, poll: bool, retrain: RetrainHook | None = None, failed_dir: Path | None = None
    ) -> Watcher:
        """Build and run a Watcher in a thread (its SQLite connection is made there)."""
        built: list[Watcher] = []

        def run() -> None:
            watcher = self.build(poll=poll, retrain=retrain, failed_dir=failed_dir)
            built.append(watcher)
            try:
                watcher.run()
            finally:
                assert self.store is not None
                self.store.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (built and built[0].started.is_set()):
            assert self.thread.is_alive(), "the watcher thread died"
            assert time.monotonic() < deadline, "the watcher did not start"
            time.sleep(0.02)
        return built[0]

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.request_stop()
        if self.thread is not None:
            self.thread.join(timeout=20)
            assert not self.thread.is_alive(), "the watcher did not stop"
        self.thread = None

    def stored_events(self) -> int:
        rag = RagStore(self.db, self.cfg.rag, readonly=True)
        try:
            return rag.store.count()
        finally:
            rag.close()

    def done(self, name: str) -> list[FileResult]:
        return [r for _, r in self.results if r.path.name == name]


def make_rig(tmp: Path, watch: WatchConfig = FAST) -> Rig:
    need_captures()
    folder = tmp / "drop"
    folder.mkdir()
    base = load_config()
    cfg = dataclasses.replace(
        base,
        node=dataclasses.replace(base.node, state_dir=str(tmp / "state")),
        rag=dataclasses.replace(base.rag, db=str(tmp / "events.sqlite")),
        watch=watch,
    )
    return Rig(
        tmp,
        folder,
        cfg,
        detection_analyser(cfg.detector, cfg.sniffer, cfg.watch.sensor, scorer=scorer()),
    )


def copy_good(folder: Path, names: Iterator[str] | list[str]) -> int:
    """Copy good captures in; the events they should give."""
    total = 0
    for name in names:
        shutil.copyfile(GOOD[name], folder / name)
        total += expected_events(GOOD[name])
    return total
