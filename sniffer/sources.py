"""Capture sources: where flow events come from, behind one interface.

A source yields ``(events, observation_point)`` pairs, ``events`` an array of
``native.EVENT_DTYPE`` and ``observation_point`` the interface or capture file name that
goes into FlowRecord.observation_point. ``flush()`` returns the flows still open (end
reason CAPTURE_END) once the caller stops iterating, whether the input ended or the
process is shutting down. ``stats()`` gives counters.

* :class:`PcapSource` reads capture files with the offline engine (native/). A folder is
  read in sorted name order through one engine, so flows continue across rotated files.
  A file the engine cannot read (unsupported link type, corrupt or truncated) is logged
  with its name (and the byte offset, for a mid-file failure), counted in ``rejected``,
  and skipped; flows read before the failure are kept, and the next file is read.
* :class:`XdpSource` polls the XDP program's ring buffer (xdp.FlowMonitor). ``xdp`` (BCC)
  is imported only when such a source is made, so offline use needs no BCC. With
  ``capture.overload`` (the default) the program summarises forged-source floods, and
  each batch also carries the flood records made of the summaries drained since the
  previous one (sniffer/overload.py). Its ring-buffer poll returns as soon as exports
  arrive, and otherwise after ``capture.poll_timeout_ms`` or, sooner, when the consumer
  has something due (:class:`WakesForDeadline`: the service hands it the publisher's
  partial-batch deadline), so a lone record is not held a poll timeout longer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

import native
from base.errors import MldError
from sniffer.config import CaptureConfig
from sniffer.overload import flood_events

__all__ = [
    "CaptureSourceError",
    "FlowSource",
    "PcapSource",
    "RejectedFile",
    "WakesForDeadline",
    "XdpSource",
]

log = logging.getLogger(__name__)

Events = npt.NDArray[np.void]


@runtime_checkable
class WakesForDeadline(Protocol):
    """A live source that waits for flow events can be told when its consumer next has
    something due (the publisher's partial batch): it then returns from its wait by then,
    empty if need be, instead of after its full poll timeout."""

    def wake_for(self, due: Callable[[], float | None]) -> None: ...


class CaptureSourceError(MldError):
    """A capture source cannot start (no such file or folder, no capture files in it)."""


class FlowSource(Protocol):
    """What the sniffer service reads flow events from."""

    def batches(self) -> Iterator[tuple[Events, str]]: ...

    def flush(self) -> list[tuple[Events, str]]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class RejectedFile:
    """A capture file the engine could not read (whole or in part), and why."""

    def __init__(self, path: str, reason: str, message: str) -> None:
        self.path = path
        self.reason = reason  # "unsupported_link_type" or "corrupt"
        self.message = message

    def __repr__(self) -> str:
        return f"RejectedFile({self.path!r}, {self.reason!r})"


_CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz")


def capture_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files to read: each file as given, each folder's capture files sorted by name."""
    files: list[Path] = []
    for given in paths:
        if str(given).strip() == "":
            raise CaptureSourceError("an empty path was given: pass a capture file or a folder")
        p = Path(given)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.name.endswith(_CAPTURE_SUFFIXES)
            )
            if not found:
                raise CaptureSourceError(
                    f"{p} holds no capture files (*.pcap, *.pcapng, *.cap); pass a file or "
                    "another folder"
                )
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise CaptureSourceError(f"{p} does not exist: pass a capture file or a folder")
    return files


class PcapSource:
    """Flow events from capture files, read in order through one offline engine."""

    def __init__(self, paths: Sequence[str | Path], capture: CaptureConfig) -> None:
        self.files = capture_files(paths)
        self.rejected: list[RejectedFile] = []
        self.files_read = 0
        self.bytes_total = sum(f.stat().st_size for f in self.files)
        self._last_obs = self.files[0].name if self.files else ""
        self._engine = native.FlowEngine(
            capture.idle_timeout_s,
            capture.active_timeout_s,
            capture.max_flows,
            capture.batch_size,
            capture.interim_s,
        )

    def batches(self) -> Iterator[tuple[Events, str]]:
        for path in self.files:
            obs = self._last_obs = path.name
            try:
                for events in self._engine.feed_file(str(path)):
                    yield events, obs
            except native.UnsupportedLinkType as exc:
                self._reject(path, "unsupported_link_type", exc)
            except native.CaptureError as exc:
                self._reject(path, "corrupt", exc)
            else:
                self.files_read += 1

    def _reject(self, path: Path, reason: str, exc: Exception) -> None:
        self.rejected.append(RejectedFile(str(path), reason, str(exc)))
        what = "skipped" if reason == "unsupported_link_type" else "read up to the error"
        log.warning("%s (%s); continuing with the next file", exc, what)

    def flush(self) -> list[tuple[Events, str]]:
        events = self._engine.finish()
        return [(events, self._last_obs)] if len(events) else []

    def stats(self) -> dict[str, int]:
        out = {k: int(v) for k, v in dict(self._engine.stats).items()}
        out["files_read"] = self.files_read
        out["files_rejected"] = len(self.rejected)
        return out

    def close(self) -> None:
        """Nothing to release: the engine is freed with the source."""


class XdpSource:
    """Flow events from the XDP program on live interfaces (needs root and BCC)."""

    def __init__(self, ifaces: Sequence[str], capture: CaptureConfig, *, pin_dir: str) -> None:
        """``pin_dir``: the node's bpffs folder for the blocklist (node.xdp_pin_dir)."""
        import xdp  # BCC: only live capture needs it

        overload = None
        if capture.overload:
            overload = xdp.OverloadSettings(
                new_flows_per_s=capture.overload_new_flows_per_s,
                ringbuf_fill=capture.overload_ringbuf_fill,
                table_fill=capture.overload_table_fill,
                hold_s=capture.overload_hold_s,
                admit_after=capture.overload_admit_after,
                src_prefix4=capture.flood_src_prefix4,
                src_prefix6=capture.flood_src_prefix6,
                max_summaries=capture.flood_max_summaries,
            )
        self.flood_records = 0
        self.flood_src_below_min = 0
        self._src_min_flows = capture.flood_src_min_flows
        self.ifaces = list(ifaces)
        self._obs = ",".join(self.ifaces)
        self._poll_ms = capture.poll_timeout_ms
        self._due: Callable[[], float | None] = lambda: None
        self._dtype = native.EVENT_DTYPE
        self._xdp: Any = xdp
        self._monitor: Any = xdp.FlowMonitor(
            self.ifaces,
            idle_timeout_s=capture.idle_timeout_s,
            active_timeout_s=capture.active_timeout_s,
            interim_s=capture.interim_s,
            max_flows=capture.max_flows,
            ringbuf_pages=capture.ringbuf_pages,
            mode=capture.xdp_mode,
            sweep_interval_s=capture.sweep_interval_s,
            pin_dir=pin_dir,
            parse_error_action=capture.parse_error_action,
            reverse_path_check=capture.reverse_path_check,
            overload=overload,
        )
        self._stopping = False

    def open(self) -> XdpSource:
        """SIGTERM becomes SystemExit (so the program is detached), then attach."""
        self._xdp.raise_on_sigterm()
        self._monitor.attach()
        log.info("XDP attached: %s", self._monitor.modes)
        return self

    @property
    def modes(self) -> dict[str, str]:
        return dict(self._monitor.modes)

    def stop(self) -> None:
        """Make :meth:`batches` return after its current poll."""
        self._stopping = True

    def _decode(self, buf: bytes) -> Events:
        events = np.frombuffer(buf, dtype=self._dtype).copy()
        keys, vals = self._monitor.take_floods()
        if len(keys) == 0:
            return events
        floods, below = flood_events(keys, vals, self._src_min_flows)
        self.flood_records += len(floods)
        self.flood_src_below_min += below
        out = np.empty(len(events) + len(floods), dtype=self._dtype)
        out[: len(events)] = events
        out[len(events) :] = floods
        return out

    def wake_for(self, due: Callable[[], float | None]) -> None:
        """``due()``: seconds until the consumer has something due (None: nothing)."""
        self._due = due

    def poll_timeout_ms(self) -> int:
        """How long the next ring-buffer poll may wait: poll_timeout_ms, or less when the
        consumer has something due sooner (a partial batch's timer)."""
        due = self._due()
        if due is None:
            return self._poll_ms
        return max(0, min(self._poll_ms, math.ceil(due * 1000)))

    def batches(self) -> Iterator[tuple[Events, str]]:
        while not self._stopping:
            # The poll returns as soon as the ring buffer has events; without any, after
            # poll_timeout_ms when nothing waits (no CPU spent idle), or when the
            # publisher's partial batch is due, so a lone record leaves after
            # transport.batch_max_delay_s, not a poll timeout later.
            buf = self._monitor.poll(self.poll_timeout_ms())
            # Empty too: the service gets a turn at least every poll_timeout_ms, so a
            # partial batch leaves on time and the control plane is followed while idle.
            yield self._decode(buf), self._obs

    def flush(self) -> list[tuple[Events, str]]:
        events = self._decode(self._monitor.flush())
        return [(events, self._obs)] if len(events) else []

    def stats(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self._monitor.stats().items()}
        out["flood_records"] = self.flood_records
        out["flood_src_below_min"] = self.flood_src_below_min
        return out

    def close(self) -> None:
        self._monitor.close()
