"""Label files (``labels.csv``): which flows of a capture are which attack.

The one definition of the format: training and evaluation read it (detector/dataset.py,
detector/evaluate.py), the lab writes it (``mld lab dataset``, lab/scenario.py) and
summarises captures with it, and ``../shared/data/labels.csv`` is in it. The lab does
not define it: it writes rows of this module's :class:`LabelRow`.

The shared columns (``../shared/data/labels.csv``) are kept, in order::

    pcap, family, attack_hosts, scope, notes

and the lab adds, for scope ``window``::

    label          finer name of the attack (syn_flood, port_scan, dns_tunnel, ...)
    target_hosts   ';'-separated addresses at the other end, or '*'
    ports          ';'-separated target-side ports, or '*' (ICMP flows ignore it)
    proto          tcp | udp | icmp | *
    start, end     the attack's time window, Unix seconds (pcap timestamps use the same clock)
    exclude_hosts  with attack_hosts '*' (forged random sources): addresses that are never
                   the attack side (the lab's own hosts)

Scopes: ``all_flows`` (every flow of the file), ``flows_from_attacker`` (a flow with an
attack host at one end), and ``window``: a flow with an attack host at one end and a
target host at the other, of the protocol, whose target-side port is listed (or 0: a
later IP fragment carries no ports), and whose lifetime overlaps [start, end] widened by
``SLACK_S`` on both sides. A flow no row matches is benign. The first matching row wins.
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from base.errors import LabError
from detector.families import BENIGN

if TYPE_CHECKING:
    from sniffer.records import FlowColumns

__all__ = [
    "COLUMNS",
    "SCOPES",
    "SHARED_COLUMNS",
    "SLACK_S",
    "LabelRow",
    "label_columns",
    "label_flows",
    "read_labels",
    "write_labels",
]

SHARED_COLUMNS = ("pcap", "family", "attack_hosts", "scope", "notes")
COLUMNS = (
    *SHARED_COLUMNS,
    "label",
    "target_hosts",
    "ports",
    "proto",
    "start",
    "end",
    "exclude_hosts",
)
SCOPES = ("all_flows", "flows_from_attacker", "window")
SLACK_S = 1.0
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
_ICMP = (1, 58)


@dataclass(frozen=True)
class LabelRow:
    pcap: str
    family: str
    attack_hosts: str
    scope: str
    notes: str = ""
    label: str = ""
    target_hosts: str = "*"
    ports: str = "*"
    proto: str = "*"
    start: str = ""
    end: str = ""
    exclude_hosts: str = ""

    @staticmethod
    def _set(text: str) -> frozenset[str] | None:
        return (
            None if text.strip() in ("", "*") else frozenset(_norm(a) for a in text.split(";") if a)
        )

    @cached_property
    def _parsed(self) -> tuple[Any, ...]:
        ports = None if self.ports.strip() in ("", "*") else {int(p) for p in self.ports.split(";")}
        if self.proto not in ("*", *_PROTO):
            raise LabError(f"unknown proto {self.proto!r} in a label row (tcp, udp, icmp, *)")
        window = (float(self.start) - SLACK_S, float(self.end) + SLACK_S) if self.start else None
        return (
            self._set(self.attack_hosts),
            self._set(self.target_hosts),
            self._set(self.exclude_hosts) or frozenset(),
            ports,
            window,
        )

    def matches(
        self, a: str, b: str, port_a: int, port_b: int, proto: int, t0: float, t1: float
    ) -> bool:
        """Does the flow between ``a`` and ``b`` belong to this row (``window`` scope)?"""
        attackers, targets, excluded, ports, window = self._parsed
        if (
            self.proto != "*"
            and _PROTO[self.proto] != proto
            and not (self.proto == "icmp" and proto in _ICMP)
        ):
            return False
        if window is not None and (t1 < window[0] or t0 > window[1]):
            return False
        for attacker, target, target_port in ((a, b, port_b), (b, a, port_a)):
            if attackers is not None and attacker not in attackers:
                continue
            if attackers is None and attacker in excluded:
                continue
            if targets is not None and target not in targets:
                continue
            if (
                ports is not None
                and proto not in _ICMP
                and target_port not in ports
                and target_port != 0
            ):
                continue
            return True
        return False


def _norm(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr.strip()))
    except ValueError as exc:
        raise LabError(f"bad address {addr!r} in a label row") from exc


def write_labels(path: Path, rows: Iterable[LabelRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for row in rows:
            w.writerow([getattr(row, c) for c in COLUMNS])


def read_labels(path: Path) -> list[LabelRow]:
    """Rows of a labels file in the shared format or the lab's extended one."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(SHARED_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise LabError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            known = {f.name for f in fields(LabelRow)}
            rows = [
                LabelRow(**{k: (v or "") for k, v in raw.items() if k in known}) for raw in reader
            ]
    except OSError as exc:
        raise LabError(f"cannot read labels {path}: {exc.strerror}") from exc
    for row in rows:
        if row.scope not in SCOPES:
            raise LabError(f"{path}: unknown scope {row.scope!r} ({', '.join(SCOPES)})")
        if row.scope == "window" and not (row.start and row.end):
            raise LabError(
                f"{path}: a 'window' row needs start and end ({row.label or row.family})"
            )
    return rows


def _addr_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def label_flows(
    rows: Sequence[LabelRow],
    src: Sequence[bytes],
    dst: Sequence[bytes],
    src_port: npt.ArrayLike,
    dst_port: npt.ArrayLike,
    protocol: npt.ArrayLike,
    first_ts_ns: npt.ArrayLike,
    last_ts_ns: npt.ArrayLike,
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_]]:
    """(family, label) of each flow: the first matching row's, or ``benign``.

    Addresses are 4- or 16-byte ``bytes`` (as ``sniffer.records.FlowColumns`` holds them).
    """
    n = len(src)
    family = np.full(n, BENIGN, dtype=object)
    label = np.full(n, BENIGN, dtype=object)
    sp, dp, pr = (np.asarray(x).tolist() for x in (src_port, dst_port, protocol))
    t0s = (np.asarray(first_ts_ns, dtype=np.float64) / 1e9).tolist()
    t1s = (np.asarray(last_ts_ns, dtype=np.float64) / 1e9).tolist()
    cache: dict[bytes, str] = {}
    for i in range(n):
        a = cache.get(src[i]) or cache.setdefault(src[i], _addr_text(src[i]))
        b = cache.get(dst[i]) or cache.setdefault(dst[i], _addr_text(dst[i]))
        for row in rows:
            if row.scope == "all_flows":
                hit = True
            elif row.scope == "flows_from_attacker":
                hosts = row._parsed[0]
                hit = hosts is None or a in hosts or b in hosts
            else:
                hit = row.matches(a, b, sp[i], dp[i], pr[i], t0s[i], t1s[i])
            if hit:
                family[i] = row.family
                label[i] = row.label or row.family
                break
    return family, label


def label_columns(
    rows: Sequence[LabelRow], cols: FlowColumns
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_]]:
    """:func:`label_flows` for the flows of a :class:`sniffer.records.FlowColumns`."""
    return label_flows(rows, cols.src_addr, cols.dst_addr, cols["src_port"], cols["dst_port"],
                       cols["protocol"], cols["first_ts_ns"], cols["last_ts_ns"])  # fmt: skip
