"""Classic pcap files read in blocks (engine.c's fast path) give the flows libpcap gives.

A pcap file of version 2.3 is read by libpcap alone (the fast path takes only 2.4), so the
same records written as 2.3 are the reference: every byte order and timestamp unit of 2.4,
records crossing the 4 MiB block boundaries, and a file where libpcap takes over mid-way
(a record longer than the snapshot, which libpcap cuts to it) must give the same events
and counters.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import native
from tests.native import pcapgen as g

T0 = 1_700_000_000 * 10**9


def frames(n: int) -> list[tuple[int, bytes]]:
    """n UDP and TCP frames of varied sizes (records land at odd offsets), whole
    microseconds so that a microsecond file holds the same times."""
    out = []
    for i in range(n):
        payload = bytes((i * 7) % 251 + 10)
        if i % 3:
            ip = g.ipv4(f"10.0.{i % 50}.1", "10.1.0.2", 17, g.udp(1000 + i % 997, 53, payload))
        else:
            ip = g.ipv4("10.0.0.9", f"10.2.{i % 40}.3", 6, g.tcp(40000 + i % 300, 80, g.ACK))
        out.append((T0 + i * 37_000, g.eth(ip)))
    return out


def write(
    path: Path,
    records: list[tuple[int, bytes]],
    *,
    big_endian: bool = False,
    nsec: bool = True,
    minor: int = 4,
    snaplen: int = 262144,
) -> Path:
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, minor, 0, 0, snaplen, 1))
    for ts_ns, frame in records:
        sec, frac = divmod(ts_ns, 10**9)
        frac = frac if nsec else frac // 1000
        out += struct.pack(e + "IIII", sec, frac, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))
    return path


def read(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    eng = native.FlowEngine(batch_size=4096)
    events = [b for b in eng.feed_file(path)] + [eng.finish()]
    stats = {k: v for k, v in eng.stats.items() if not k.startswith("table_")}
    return np.concatenate(events), stats


@pytest.mark.parametrize(
    ("big_endian", "nsec"), [(False, True), (True, True), (False, False), (True, False)]
)
def test_blocks_give_libpcaps_flows(tmp_path: Path, big_endian: bool, nsec: bool) -> None:
    records = frames(60_000)  # ~9 MB: the reads cross two block boundaries
    ref_events, ref_stats = read(write(tmp_path / "ref.pcap", records, minor=3))
    path = write(tmp_path / "fast.pcap", records, big_endian=big_endian, nsec=nsec)
    assert path.stat().st_size > 2 * (4 << 20)
    events, stats = read(path)
    assert stats == ref_stats and stats["packets"] == len(records)
    assert events.tobytes() == ref_events.tobytes()


def test_libpcap_takes_over_at_a_record_past_the_snapshot(tmp_path: Path) -> None:
    records = frames(5000)
    ts, frame = records[2500]
    records[2500] = (ts, frame + bytes(400))  # longer than the snapshot below
    ref_events, ref_stats = read(write(tmp_path / "ref.pcap", records, minor=3, snaplen=400))
    events, stats = read(write(tmp_path / "fast.pcap", records, snaplen=400))
    assert stats == ref_stats and stats["packets"] == len(records)
    assert events.tobytes() == ref_events.tobytes()
