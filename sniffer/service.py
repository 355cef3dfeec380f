"""The sniffer's long-running loop: source -> pipeline -> publisher (and optional sinks).

``SnifferService.run()`` reads events from its source until the source ends (a capture
file) or the process is told to stop (SIGINT, or SIGTERM turned into SystemExit by
base.signals.sigterm_raises_systemexit), then always: takes the flows still open from
the source (``flush``; end reason CAPTURE_END), processes them, sends the last partial
batch and closes. Progress and counters are logged every ``stats_interval_s``.

Control plane (control/, when ``control.endpoints`` is set): ``mld sniffer run`` makes the
sniffer's ServiceControl (sniffer/cli.py) and :meth:`SnifferService.attach_control`
(control.FollowsControl) hands it to the service, which polls it before every batch it
handles, so a change reaches the pipeline before the next flows are scored. A change of
``sniffer.rules`` takes effect from that batch, the per-source and per-destination
windows kept; a publisher that follows discovery connects to the detectors as they
register and go. The health the control thread writes is a copy of the counters the
service thread made (at most ``control.health_interval_s`` old): the sources' counters
(BPF maps, the native engine) are only read from the service thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from control import ControlState, DiscoveredSender, FollowsControl, ServiceControl
from sniffer.overload import OverloadReport
from sniffer.pipeline import FlowPipeline, ProcessedFlows
from sniffer.publisher import FlowPublisher
from sniffer.sources import FlowSource, WakesForDeadline

__all__ = ["SnifferService"]

log = logging.getLogger(__name__)

Sink = Callable[[ProcessedFlows], None]


class SnifferService(FollowsControl):
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
        self.config_changes = 0
        self._next_stats = time.monotonic() + stats_interval_s
        self._health_interval_s = 5.0
        self._next_health = 0.0
        self._health: dict[str, int] = {}
        self._overload = OverloadReport()
        if publisher is not None and isinstance(source, WakesForDeadline):
            # A live source waits for flow events only until the partial batch is due.
            source.wake_for(publisher.time_to_deadline)

    def attach_control(self, plane: ServiceControl[Any]) -> None:
        """Follow ``plane`` before every batch (live rules, discovered detectors)."""
        if plane.session is not None:
            self._health_interval_s = plane.session.cfg.health_interval_s
        super().attach_control(plane)

    def follow_control(self) -> None:
        now = time.monotonic()
        if now >= self._next_health:  # for etcd and /metrics (which may run without etcd)
            self._next_health = now + self._health_interval_s
            self._health = self.stats()
        if self.plane is None:
            return
        super().follow_control()

    def apply_control(self, state: ControlState[Any]) -> None:
        """Live ``sniffer.rules``; the detectors a discovering publisher sends to."""
        rules = state.config.sniffer.rules
        if rules != self.pipeline.rules.config:
            self.pipeline.rules.reconfigure(rules)
            self.config_changes += 1
            changed = [k for k in state.changed if k.startswith("sniffer.rules")]
            log.info("fast rules changed (from etcd): %s", ", ".join(changed))
        sender = self.publisher.sender if self.publisher is not None else None
        if isinstance(sender, DiscoveredSender):
            sender.update(state.peers.get(sender.component, {}).values())

    def health(self) -> tuple[str, dict[str, object]]:
        """State and counters for the control plane (called from its thread): the copy
        the service thread made last, never a read of the source from this thread."""
        return "ok", dict(self._health)

    def _handle(self, events: npt.NDArray[np.void], observation_point: str) -> None:
        self.follow_control()
        if len(events):
            # The publisher sends packed rows; serialized records only for sinks that print.
            live = self.publisher is not None
            done = self.pipeline.process(
                events, observation_point, encode=bool(self.sinks) or not live, pack=live
            )
            if self.publisher is not None and done.packed is not None:
                self.publisher.add_packed(done.packed)
            for sink in self.sinks:
                sink(done)
        if self.publisher is not None:
            self.publisher.poll()
        if time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + self.stats_interval_s
            stats = self.stats()
            log.info("sniffer: %s", " ".join(f"{k}={v}" for k, v in stats.items()))
            self._report_overload(stats)

    def _report_overload(self, stats: dict[str, int]) -> None:
        """Once per stats interval: what overload mode summarised and what was lost since
        the previous line, in the log and (when it moved) in etcd for ``mld status``."""
        src = {k.removeprefix("source."): v for k, v in stats.items() if k.startswith("source.")}
        line = self._overload.update(src)
        if line is None:
            return
        lost = src.get("evicted", 0) + src.get("final_dropped", 0) + src.get("summary_lost", 0)
        level = logging.WARNING if lost or src.get("lost_uncounted", 0) else logging.INFO
        log.log(level, "overload: %s", line)
        if self.plane is not None:
            self.plane.report("overload", {**src, "summary": self._overload.summary(src)})

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
                # What overload mode summarised or lost since the last interval's line:
                # a run shorter than one stats interval must say it too.
                self._report_overload(self.stats())
                log.info("sniffer finished: %s", self._stats_line())

    def stats(self) -> dict[str, int]:
        out = {f"source.{k}": v for k, v in self.source.stats().items()}
        out.update({f"pipeline.{k}": v for k, v in self.pipeline.stats().items()})
        if self.publisher is not None:
            out.update({f"publish.{k}": v for k, v in self.publisher.stats().items()})
        if self.plane is not None and self.plane.enabled:
            out["control.config_changes"] = self.config_changes
        return out

    def _stats_line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.stats().items())
