"""capture_file.py: the first packet's time from pcap and pcapng headers, checked against
files written here byte by byte and against the flow engine on the shared captures."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sniffer.capture_file import first_packet_ts
from sniffer.config import CaptureConfig
from sniffer.records import flow_columns
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

_PACKET = bytes(14)  # the bytes themselves are never read


def _pcap(order: str, magic: int, sec: int, frac: int) -> bytes:
    header = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(order + "IIII", sec, frac, len(_PACKET), len(_PACKET))
    return header + record + _PACKET


def _block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _pcapng(tsresol: int | None, ticks: int, iface: int = 0) -> bytes:
    section = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol is not None:
        opts = struct.pack("<HHB", 9, 1, tsresol) + bytes(3) + struct.pack("<HH", 0, 0)
    interfaces = b"".join(
        _block(1, struct.pack("<HHI", 1, 0, 65535) + (opts if i == iface else b""))
        for i in range(iface + 1)
    )
    packet = _block(
        6,
        struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(_PACKET), len(_PACKET))
        + _PACKET,
    )
    return section + interfaces + packet


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_pcap("<", 0xA1B2C3D4, 1_700_000_000, 250_000), 1_700_000_000.25),  # microseconds
        (_pcap(">", 0xA1B2C3D4, 1_700_000_000, 500_000), 1_700_000_000.5),  # big-endian
        (_pcap("<", 0xA1B23C4D, 1_700_000_000, 125_000_000), 1_700_000_000.125),  # nanoseconds
        (_pcapng(None, 1_700_000_000_750_000), 1_700_000_000.75),  # default: microseconds
        (_pcapng(9, 1_700_000_000_250_000_000), 1_700_000_000.25),  # if_tsresol 10^-9
        (_pcapng(0x80 | 10, 1_700_000_000 * 1024 + 512), 1_700_000_000.5),  # 2^-10
        (_pcapng(9, 1_700_000_000_250_000_000, iface=1), 1_700_000_000.25),  # second interface
    ],
)
def test_first_packet_time_from_the_headers(tmp_path: Path, data: bytes, expected: float) -> None:
    path = tmp_path / "c.cap"
    path.write_bytes(data)
    assert first_packet_ts(path) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a capture file at all, but long enough",
        _pcap("<", 0xA1B2C3D4, 1, 0)[:24],  # a header and no packet
        _pcapng(9, 1)[:40],  # section and part of an interface block
    ],
)
def test_no_time_without_a_packet(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(data)
    assert first_packet_ts(path) is None


def test_a_missing_file_has_no_time(tmp_path: Path) -> None:
    assert first_packet_ts(tmp_path / "missing.pcap") is None


@pytest.mark.parametrize(
    "capture",
    ["attacks/scan/masscan_tcp_0_1000.pcap", "attacks/ddos/syn_dominate_ecn_cwr.pcapng"],
)
def test_it_agrees_with_the_flow_engine(capture: str) -> None:
    path = SHARED_DATA / "pcaps" / capture
    if not path.exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    source = PcapSource([path], CaptureConfig())
    firsts = [
        int(flow_columns(events, obs)["first_ts_ns"].min())
        for events, obs in [*source.batches(), *source.flush()]
        if len(events)
    ]
    got = first_packet_ts(path)
    assert got is not None
    assert got == pytest.approx(min(firsts) / 1e9, abs=1e-6)
