"""A packet capture on a lab host's NIC with tcpdump, started and stopped around a scenario."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from base.errors import LabError
from lab.netns import exec_args

__all__ = ["Capture"]

_STATS = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel)")


class Capture:
    """``tcpdump -w`` inside a namespace. Use as a context manager; ``stats`` after exit.

    ``snaplen`` bytes of each packet are kept: the flow engine reads lengths from the IP
    header, so headers and the first bytes of DNS names are all it needs.
    """

    def __init__(self, namespace: str, iface: str, out: Path, snaplen: int = 256) -> None:
        self.namespace = namespace
        self.iface = iface
        self.out = out
        self.snaplen = snaplen
        self.stats: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._err = out.with_suffix(".tcpdump.log")

    def __enter__(self) -> Capture:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        argv = ["tcpdump", "-n", "-i", self.iface, "-s", str(self.snaplen), "-B", "32768",
                "-w", str(self.out), "--immediate-mode"]  # fmt: skip
        err = open(self._err, "w")
        self._proc = subprocess.Popen(exec_args(self.namespace, argv), stdout=subprocess.DEVNULL,
                                      stderr=err, text=True, start_new_session=True)  # fmt: skip
        err.close()
        deadline = time.monotonic() + 10
        while "listening on" not in self._err.read_text():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise LabError(f"tcpdump on {self.namespace}/{self.iface} did not start: "
                               f"{self._err.read_text()[-500:]}")  # fmt: skip
            time.sleep(0.05)
        return self

    def _stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __exit__(self, *exc: object) -> None:
        self._stop()
        text = self._err.read_text()
        for count, what in _STATS.findall(text):
            self.stats[what.replace(" ", "_")] = int(count)
        self.stats["bytes"] = self.out.stat().st_size if self.out.exists() else 0
        self._err.unlink(missing_ok=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
