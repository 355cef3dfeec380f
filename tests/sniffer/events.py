"""Build flow events (native.EVENT_DTYPE) by hand for the sniffer's tests."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import numpy.typing as npt

import native

T0 = 1_700_000_000_000_000_000  # ns since the epoch


def addr16(text: str) -> bytes:
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def event(
    src: str = "192.0.2.1",
    dst: str = "198.51.100.7",
    sport: int = 40000,
    dport: int = 80,
    protocol: int = 6,
    ts: int = T0,
    **fields: Any,
) -> npt.NDArray[np.void]:
    """One event with the initiator ``src:sport``; key order and INITIATOR_LO as flow.h."""
    ev = np.zeros(1, dtype=native.EVENT_DTYPE)
    s, d = addr16(src), addr16(dst)
    ports = protocol in (6, 17)
    sp, dp = (sport, dport) if ports else (0, 0)
    src_lo = (s, sp) < (d, dp)
    lo, hi = ((s, sp), (d, dp)) if src_lo else ((d, dp), (s, sp))
    ev["addr_lo"][0] = np.frombuffer(lo[0], dtype=np.uint8)
    ev["addr_hi"][0] = np.frombuffer(hi[0], dtype=np.uint8)
    ev["port_lo"], ev["port_hi"] = lo[1], hi[1]
    ev["protocol"] = protocol
    ev["ip_version"] = ipaddress.ip_address(src).version
    ev["flags"] = 1 if src_lo else 0
    ev["first_ts_ns"] = ts
    ev["last_ts_ns"] = ts
    ev["fwd_packets"] = 1
    ev["fwd_bytes"] = 60
    ev["fwd_len_sumsq"] = 3600
    ev["end_reason"] = 3
    for name, value in fields.items():
        ev[name] = value
    return ev


def events(*parts: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """Concatenate, keeping the padded layout (np.concatenate would compact the dtype)."""
    out = np.zeros(sum(len(p) for p in parts), dtype=native.EVENT_DTYPE)
    i = 0
    for part in parts:
        out[i : i + len(part)] = part
        i += len(part)
    return out


def wire_name(dotted: str) -> bytes:
    out = b""
    for label in dotted.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"
