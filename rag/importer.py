"""``mld rag import``: capture files through the whole detection path into the store.

The flows of the captures are made by the sniffer's pipeline (as ``mld sniffer flows`` and the
live sensor make them), scored by the shipped model bundle as ``mld detector run`` scores them,
and stored as ScoredEvents, so a store can be filled offline, without the services.
``shift_to`` moves every flow's times so the first capture starts at that instant (a
demo timeline from old captures; the scores do not depend on absolute times).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from detector.features import scorer_inputs
from detector.scoring import Scorer
from detector.verdicts import add_scored_events, build_verdicts
from proto.events_pb2 import EventBatch, FlowRecord, ScoredEvent
from sniffer.config import SnifferConfig
from sniffer.pipeline import FlowPipeline
from sniffer.sources import PcapSource, RejectedFile

__all__ = ["first_packet_ts", "scored_events"]


def first_packet_ts(path: Path) -> float | None:
    """Time of the first packet of a pcap or pcapng file (s since the epoch), read from
    its headers; None if the file is neither or holds no packet."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return None
    if len(data) < 24:
        return None
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", data[:4])
        if magic in (0xA1B2C3D4, 0xA1B23C4D):  # pcap, microseconds / nanoseconds
            if len(data) < 32:
                return None
            sec, frac = struct.unpack(order + "II", data[24:32])
            return float(sec + frac / (1e9 if magic == 0xA1B23C4D else 1e6))
    if data[:4] != b"\x0a\x0d\x0d\x0a":
        return None
    order = "<" if struct.unpack("<I", data[8:12])[0] == 0x1A2B3C4D else ">"
    resolution: list[float] = []  # per interface, seconds per tick
    pos = 0
    while pos + 12 <= len(data):
        kind, length = struct.unpack(order + "II", data[pos : pos + 8])
        if length < 12:
            return None
        body = data[pos + 8 : pos + length - 4]
        if kind == 1:  # interface description: options after 8 bytes
            tick = 1e-6
            opt = 8
            while opt + 4 <= len(body):
                code, size = struct.unpack(order + "HH", body[opt : opt + 4])
                if code == 0:
                    break
                if code == 9 and size >= 1:  # if_tsresol
                    v = body[opt + 4]
                    tick = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
                opt += 4 + (size + 3) // 4 * 4
            resolution.append(tick)
        elif kind == 6 and len(body) >= 12:  # enhanced packet
            iface, high, low = struct.unpack(order + "III", body[:12])
            tick = resolution[iface] if iface < len(resolution) else 1e-6
            return float(((high << 32) | low) * tick)
        pos += length
    return None


def _records(
    paths: Sequence[Path], cfg: SnifferConfig, rejected: list[RejectedFile] | None
) -> Iterator[list[FlowRecord]]:
    source = PcapSource(paths, cfg.capture)
    pipeline = FlowPipeline(cfg)
    for events, obs in [*source.batches(), *source.flush()]:
        if len(events):
            yield [FlowRecord.FromString(b) for b in pipeline.process(events, obs).records]
    if rejected is not None:
        rejected.extend(source.rejected)


def scored_events(
    paths: Sequence[Path],
    cfg: SnifferConfig,
    scorer: Scorer,
    *,
    sensor_id: str = "offline",
    shift_to: float | None = None,
    progress: Callable[[int], None] | None = None,
    rejected: list[RejectedFile] | None = None,
) -> Iterator[list[ScoredEvent]]:
    """Batches of ScoredEvents from the flows of ``paths``.

    A file the engine could not read, whole or from some offset on, is skipped from there
    (its flows up to the failure are kept, as PcapSource does) and, once the batches are
    exhausted, appended to ``rejected`` if given (``mld watch`` flags such files).
    """
    offset: int | None = None if shift_to is not None else 0
    n = 0
    for records in _records(paths, cfg, rejected):
        if offset is None:
            assert shift_to is not None
            # From the first packet: a flow exported later may have started earlier.
            first = first_packet_ts(paths[0])
            start_ns = (
                int(first * 1e9) if first is not None else min(r.first_ts_ns for r in records)
            )
            offset = int(shift_to * 1e9) - start_ns
        if offset:
            for r in records:
                r.first_ts_ns += offset
                r.last_ts_ns += offset
        scores = scorer.score(*scorer_inputs(records))
        ids = [f"import-{n + i}" for i in range(len(records))]
        verdicts = build_verdicts(scores, records, sensor_id, ids, time.time_ns())
        batch = EventBatch()
        add_scored_events(batch, records, verdicts, sensor_id)
        n += len(records)
        if progress is not None:
            progress(n)
        yield list(batch.events)
