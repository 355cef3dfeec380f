"""Capture-file headers, read without the flow engine: when a pcap or pcapng file starts.

:func:`first_packet_ts` reads the first packet's timestamp from the file's own headers
(pcap: microsecond or nanosecond magic, either byte order; pcapng: the section's byte
order and each interface's ``if_tsresol``), so a capture can be placed on a timeline
before, or without, reading its flows. Only the first MiB is read.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["first_packet_ts"]

_PCAP_US, _PCAP_NS = 0xA1B2C3D4, 0xA1B23C4D
_PCAPNG_SECTION = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BYTE_ORDER = 0x1A2B3C4D
_INTERFACE_DESCRIPTION, _ENHANCED_PACKET = 1, 6
_IF_TSRESOL = 9


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
        if magic in (_PCAP_US, _PCAP_NS):
            if len(data) < 32:
                return None
            sec, frac = struct.unpack(order + "II", data[24:32])
            return float(sec + frac / (1e9 if magic == _PCAP_NS else 1e6))
    if data[:4] != _PCAPNG_SECTION:
        return None
    return _pcapng_first_ts(data)


def _pcapng_first_ts(data: bytes) -> float | None:
    order = "<" if struct.unpack("<I", data[8:12])[0] == _PCAPNG_BYTE_ORDER else ">"
    resolution: list[float] = []  # per interface, seconds per tick
    pos = 0
    while pos + 12 <= len(data):
        kind, length = struct.unpack(order + "II", data[pos : pos + 8])
        if length < 12:
            return None
        body = data[pos + 8 : pos + length - 4]
        if kind == _INTERFACE_DESCRIPTION:  # options after 8 bytes
            tick = 1e-6
            opt = 8
            while opt + 4 <= len(body):
                code, size = struct.unpack(order + "HH", body[opt : opt + 4])
                if code == 0:
                    break
                if code == _IF_TSRESOL and size >= 1:
                    v = body[opt + 4]
                    tick = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
                opt += 4 + (size + 3) // 4 * 4
            resolution.append(tick)
        elif kind == _ENHANCED_PACKET and len(body) >= 12:
            iface, high, low = struct.unpack(order + "III", body[:12])
            tick = resolution[iface] if iface < len(resolution) else 1e-6
            return float(((high << 32) | low) * tick)
        pos += length
    return None
