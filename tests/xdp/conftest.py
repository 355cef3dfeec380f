"""Fixtures for tests/xdp: the router topology and monitor processes inside namespaces.

A monitor runs as tests/xdp/driver.py under ``nsenter --net=/run/netns/NS``: it joins the
namespace's network only, so it shares the host's bpffs and the test process can open the
pinned blocklist as a second process would. Every monitor is stopped and every pin dir
removed even when the test fails; the namespace fixtures delete namespaces (and with them
any XDP attachment).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, require_root_and, wait_for

__all__ = ["Monitor", "monitors"]

DRIVER = Path(__file__).resolve().parent / "driver.py"


class Monitor:
    """One driver process; events() and stats() read what it wrote so far."""

    def __init__(self, ns: str, ifaces: list[str], work: Path, pin_dir: Path, **opts: Any):
        self.ns, self.ifaces, self.work = ns, ifaces, work
        work.mkdir(parents=True)
        self.out, self.json = work / "out.bin", work / "events.jsonl"
        self.ready, self.stats_file = work / "ready.json", work / "stats.json"
        args = [
            "nsenter", f"--net=/run/netns/{ns}", sys.executable, str(DRIVER),
            "--out", str(self.out), "--json", str(self.json), "--ready", str(self.ready),
            "--stats", str(self.stats_file), "--pin-dir", str(pin_dir),
        ]  # fmt: skip
        for iface in ifaces:
            args += ["--iface", iface]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            args += [flag] if v is True else [flag, str(v)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.stderr = (work / "stderr").open("w")
        self.proc = subprocess.Popen(args, env=env, stderr=self.stderr, text=True)
        wait_for(lambda: self.ready.exists() or self.proc.poll() is not None, 60, "attach")
        if self.proc.poll() is not None:
            raise AssertionError(f"monitor failed to start: {self.err()}")
        info = json.loads(self.ready.read_text())
        self.modes: dict[str, str] = info["modes"]
        self.record_size: int = info["size"]

    def err(self) -> str:
        self.stderr.flush()
        return (self.work / "stderr").read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stderr.close()
        return self.proc.returncode

    def events(self) -> list[dict[str, Any]]:
        if not self.json.exists():
            return []
        return [json.loads(line) for line in self.json.read_text().splitlines() if line]

    def stats(self) -> dict[str, int]:
        data: dict[str, int] = json.loads(self.stats_file.read_text())
        return data

    def fresh_stats(self) -> dict[str, int]:
        """Counters written after this call (the driver rewrites them every poll)."""
        before = self.stats_file.stat().st_mtime_ns if self.stats_file.exists() else 0
        wait_for(
            lambda: self.stats_file.exists() and self.stats_file.stat().st_mtime_ns > before,
            10,
            "fresh stats",
        )
        time.sleep(0.15)  # the next write follows at least one more poll
        return self.stats()


@pytest.fixture
def monitors(tmp_path: Path) -> Iterator[Any]:
    """Factory: monitors(ns, [ifaces], **driver options) -> Monitor; all stopped at the end."""
    require_root_and("ip", "nsenter", "ping")
    pytest.importorskip("bcc")
    pin_dir = Path("/sys/fs/bpf") / f"mldt-{uuid.uuid4().hex[:8]}"
    started: list[Monitor] = []

    def start(ns: str, ifaces: list[str], **opts: Any) -> Monitor:
        m = Monitor(ns, ifaces, tmp_path / f"mon{len(started)}", pin_dir, **opts)
        started.append(m)
        return m

    start.pin_dir = pin_dir  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for m in started:
            m.stop()
        shutil.rmtree(pin_dir, ignore_errors=True)
