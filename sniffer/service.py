"""The sniffer's long-running loop: source -> pipeline -> publisher (and optional sinks).

``SnifferService.run()`` reads events from its source until the source ends (a capture
file) or the process is told to stop (SIGINT, or SIGTERM turned into SystemExit), then
always: takes the flows still open from the source (``flush``; end reason CAPTURE_END),
processes them, sends the last partial batch and closes. Progress and counters are logged
every ``stats_interval_s``.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import numpy as np
import numpy.typing as npt

from sniffer.pipeline import FlowPipeline, ProcessedFlows
from sniffer.publisher import FlowPublisher
from sniffer.sources import FlowSource

__all__ = ["SnifferService", "sigterm_raises_systemexit"]

log = logging.getLogger(__name__)

Sink = Callable[[ProcessedFlows], None]


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def sigterm_raises_systemexit() -> None:
    """SIGTERM -> SystemExit(143), so the loop's ``finally`` flushes (main thread only)."""
    signal.signal(signal.SIGTERM, _raise_exit)


class SnifferService:
    """Runs one source through the pipeline into the publisher and sinks."""

    def __init__(
        self,
        source: FlowSource,
        pipeline: FlowPipeline,
        publisher: FlowPublisher | None = None,
        sinks: tuple[Sink, ...] = (),
        stats_interval_s: float = 10.0,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.publisher = publisher
        self.sinks = sinks
        self.stats_interval_s = stats_interval_s
        self.interrupted = False
        # Checked after every batch: True ends the run early (the flush still happens).
        self.stop_when: Callable[[], bool] = lambda: False
        self._next_stats = time.monotonic() + stats_interval_s

    def _handle(self, events: npt.NDArray[np.void], observation_point: str) -> None:
        if len(events):
            done = self.pipeline.process(events, observation_point)
            if self.publisher is not None:
                self.publisher.add(done.records)
            for sink in self.sinks:
                sink(done)
        if self.publisher is not None:
            self.publisher.poll()
        if time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + self.stats_interval_s
            log.info("sniffer: %s", self._stats_line())

    def run(self) -> None:
        """Process until the source ends or the process is interrupted; always flush."""
        try:
            for events, obs in self.source.batches():
                self._handle(events, obs)
                if self.stop_when():
                    break
        except (KeyboardInterrupt, SystemExit) as exc:
            self.interrupted = True
            log.info("stopping (%s): flushing the flow table", type(exc).__name__)
        finally:
            try:
                for events, obs in self.source.flush():
                    self._handle(events, obs)
                if self.publisher is not None:
                    self.publisher.flush()
            finally:
                log.info("sniffer finished: %s", self._stats_line())

    def stats(self) -> dict[str, int]:
        out = {f"source.{k}": v for k, v in self.source.stats().items()}
        out.update({f"pipeline.{k}": v for k, v in self.pipeline.stats().items()})
        if self.publisher is not None:
            out.update({f"publish.{k}": v for k, v in self.publisher.stats().items()})
        return out

    def _stats_line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.stats().items())
