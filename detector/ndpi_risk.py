"""Flows that nDPI flags with a risk, read from the nDPI test suite's ``results/*.out``.

The shared nDPI captures are "mostly benign": nDPI's own analysis of each file lists its
flows, and a flow line with a ``[Risk: ...]`` entry is one nDPI finds suspicious (a
known protocol on an odd port, a missing User-Agent, an unidirectional flow, ...). The
evaluation leaves those flows out of the false-positive rate, as the shared data's README
asks. A flow line looks like::

    <tab>22<tab>TCP 192.168.115.8:49606 <-> 106.185.35.110:80 [proto: ...]...[Risk: ** ... **]...

IPv6 endpoints are written ``[dead::beef]:30000``; ICMP endpoints have no port. A flow is
identified by protocol and its two endpoints, in either order, ports ignored for ICMP.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

__all__ = ["FlowKey", "flow_key", "results_file", "risky_flows"]

FlowKey = tuple[int, frozenset[tuple[str, int]]]

_PROTOS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "IPV6-ICMP": 58}
_ENDPOINT = r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(?::(\d+))?"
_LINE = re.compile(rf"^\s*\d+\s+(\S+)\s+{_ENDPOINT}\s+(?:<->|->)\s+{_ENDPOINT}\s")


def _norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr.strip("[]")))


def flow_key(proto: int, a: str, port_a: int, b: str, port_b: int) -> FlowKey:
    """Direction-free key of a flow; ICMP ports are ignored (nDPI prints none)."""
    if proto in (1, 58):
        port_a = port_b = 0
    return proto, frozenset(((_norm(a), port_a), (_norm(b), port_b)))


def results_file(pcap: Path) -> Path:
    """nDPI's analysis of ``pcap``: ``results/<file name>.out`` beside it."""
    return pcap.parent / "results" / f"{pcap.name}.out"


def risky_flows(results: Path) -> set[FlowKey]:
    """Keys of the flows nDPI lists with a Risk in ``results`` (empty if there is no file)."""
    try:
        text = results.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    out: set[FlowKey] = set()
    for line in text.splitlines():
        if "[Risk:" not in line:
            continue
        m = _LINE.match(line)
        if not m:
            continue
        proto = _PROTOS.get(m.group(1).upper())
        if proto is None:
            try:
                proto = int(m.group(1))
            except ValueError:
                continue
        try:
            out.add(
                flow_key(proto, m.group(2), int(m.group(3) or 0), m.group(4), int(m.group(5) or 0))
            )
        except ValueError:
            continue
    return out
