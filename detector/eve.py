"""Suricata EVE JSON output: alerts, flows and stats that Suricata's tools read as they are.

The events validate against Suricata's own EVE schema (``etc/schema.json`` of OISF/suricata;
a test checks every event type against the copy in the shared data), so Filebeat's Suricata
module, EveBox, Wazuh and Splunk decoders and ``jq`` one-liners keyed on
``alert.signature_id`` work unchanged::

    {"timestamp": "2026-11-21T10:00:03.512004+0000", "flow_id": 5144898365431037690,
     "event_type": "alert", "src_ip": "172.31.15.102", "src_port": 51406,
     "dest_ip": "198.124.152.15", "dest_port": 22, "proto": "TCP", "host": "sensor-1",
     "community_id": "1:kTeRmcxZp2ZWkC2A1dfqgCEIIz4=",
     "alert": {"action": "allowed", "gid": 1, "signature_id": 9100201, "rev": 1,
               "signature": "ML Defender scan: port_scan fast rule",
               "category": "Detection of a Network Scan", "severity": 1,
               "metadata": {"ml_family": ["scan"], "ml_final_score": ["0.98"], ...}},
     "flow": {"pkts_toserver": 1, "pkts_toclient": 0, "bytes_toserver": 60, ...}}

What ML Defender adds goes where the schema leaves room: under ``alert.metadata`` (free
keys; like Suricata's rule metadata, each value is a list of strings), never beside it.

Signature ids. ML Defender owns gid 1 sids 9,100,000-9,100,999 (outside ET Open's
2,000,000-2,999,999 and the local-rule range 1,000,000-1,999,999). Each family has a block
of 100: ``+0`` its forest (the model scored the flow highest), ``+1...`` its fast rules
(the sniffer's rule scored it highest). The table is :data:`SIGNATURES`; an id, once given,
never changes meaning (``rev`` goes up when its logic does).

Event types:

- ``alert``: one per suspicious or malicious verdict; ``alert.action`` is ``allowed`` (the
  detector alerts; whether the firewall acts is its own ``drop`` event) and severity 1 for
  malicious (sent to the firewall), 2 for suspicious.
- ``flow`` (``detector.eve_flows``): one per scored flow, with the same ``flow_id`` and
  ``community_id`` as its alert, so a SIEM joins them.
- ``drop``: written by the firewall agent for each block, extension and unblock (see
  :func:`eve_drop`): the blocked source as ``src_ip`` and the decision in ``drop.reason``.
- ``stats``: every ``detector.eve_stats_interval_s``: uptime, alerts, flows by protocol.

Timestamps are the flow's last packet (alerts, flows) or the wall clock (drop, stats).
The file is reopened when it was moved or removed (logrotate without copytruncate),
checked at most once a second; each batch is written and flushed at once.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from base.errors import MldError
from proto.events_pb2 import (
    LABEL_MALICIOUS,
    LABEL_SUSPICIOUS,
    EndReason,
    FlowRecord,
    Verdict,
)

__all__ = [
    "GID",
    "SIGNATURES",
    "EveWriter",
    "Signature",
    "community_id",
    "eve_alert",
    "eve_drop",
    "eve_flow",
    "eve_stats",
    "signature_for",
]

log = logging.getLogger(__name__)

_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP"}
# Generator id of every ML Defender signature (Suricata's rules use 1 too).
GID = 1


@dataclass(frozen=True)
class Signature:
    """One stable alert identity: ``sid`` never changes meaning; ``rev`` counts changes."""

    sid: int
    rev: int
    signature: str
    category: str


def _family(base: int, family: str, category: str, rules: Sequence[str]) -> dict[str, Signature]:
    table = {"": Signature(base, 1, f"ML Defender {family}: model", category)}
    for offset, rule in enumerate(rules, start=1):
        table[rule] = Signature(
            base + offset, 1, f"ML Defender {family}: {rule} fast rule", category
        )
    return table


# family -> fast rule ("" for the family's forest) -> signature. Append only.
SIGNATURES: dict[str, dict[str, Signature]] = {
    "ddos": _family(
        9100100,
        "ddos",
        "Detection of a Denial of Service Attack",
        ("syn_flood", "udp_flood", "reflection"),
    ),
    "scan": _family(
        9100200,
        "scan",
        "Detection of a Network Scan",
        ("port_scan", "host_sweep", "tiny_fragments", "fingerprint"),
    ),
    "bruteforce": _family(9100300, "bruteforce", "Attempted User Privilege Gain", ("brute_force",)),
    "tunnel": _family(9100400, "tunnel", "Potentially Bad Traffic", ("dns_tunnel",)),
    "lateral": _family(9100500, "lateral", "Misc Attack", ()),
    "anomaly": _family(9100600, "anomaly", "Potentially Bad Traffic", ()),
    "c2": _family(9100700, "c2", "A Network Trojan was detected", ("beacon",)),
}
# A family or rule this table does not know yet (a newer bundle): one catch-all id.
UNKNOWN = Signature(9100000, 1, "ML Defender: unlisted family", "Potentially Bad Traffic")


def signature_for(verdict: Verdict) -> Signature:
    """The signature of a verdict: its fast rule's when that rule scored it highest,
    else its family's model signature."""
    family = SIGNATURES.get(verdict.family)
    if family is None:
        return UNKNOWN
    rule_won = bool(verdict.fast_rule) and verdict.fast_score >= verdict.ml_score
    return family.get(verdict.fast_rule if rule_won else "", family[""])


def _iso(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}+0000"


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw)) if raw else ""


def _packed(raw: bytes) -> bytes:
    """The address as Community ID hashes it: 4 bytes for IPv4 (also IPv4-mapped)."""
    if len(raw) == 16 and raw[:12] == b"\x00" * 10 + b"\xff\xff":
        return raw[12:]
    return raw


# ICMP type -> the type that answers it, for Community ID's port-equivalent ordering.
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
_ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130}


def community_id(
    src: bytes, dst: bytes, proto: int, src_port: int, dst_port: int, seed: int = 0
) -> str:
    """The Community ID v1 of a flow (``1:<base64 sha1>``), as Zeek and Suricata log it.

    ``src``/``dst`` are packed addresses (4 or 16 bytes; IPv4-mapped IPv6 counts as IPv4).
    For ICMP and ICMPv6 the ports are the type and code (as in ML Defender's records): a
    request and its reply get the same id, and a one-way type is never swapped.
    """
    saddr, daddr = _packed(src), _packed(dst)
    sport, dport = src_port, dst_port
    one_way = False
    if proto in (1, 58):
        pairs = _ICMP4_PAIRS if proto == 1 else _ICMP6_PAIRS
        icmp_type = src_port
        if icmp_type in pairs:
            sport, dport = icmp_type, pairs[icmp_type]
        else:
            sport, dport, one_way = icmp_type, dst_port, True
    if not one_way and (saddr, sport) > (daddr, dport):
        saddr, daddr, sport, dport = daddr, saddr, dport, sport
    data = struct.pack("!H", seed) + saddr + daddr + struct.pack("!BB", proto, 0)
    if proto in (1, 58, 6, 17, 132):
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def _five_tuple(record: FlowRecord, sensor_id: str) -> dict[str, Any]:
    return {
        "flow_id": record.flow_id,
        "src_ip": _addr(record.src_addr),
        "src_port": record.src_port,
        "dest_ip": _addr(record.dst_addr),
        "dest_port": record.dst_port,
        "proto": _PROTO.get(record.protocol, str(record.protocol)),
        "host": sensor_id,
        "community_id": community_id(
            record.src_addr, record.dst_addr, record.protocol, record.src_port, record.dst_port
        ),
    }


def _flow_counts(record: FlowRecord) -> dict[str, Any]:
    return {
        "pkts_toserver": record.fwd.packets,
        "pkts_toclient": record.bwd.packets,
        "bytes_toserver": record.fwd.bytes,
        "bytes_toclient": record.bwd.bytes,
        "start": _iso(record.first_ts_ns),
        "end": _iso(record.last_ts_ns or record.first_ts_ns),
    }


def _num(value: float) -> str:
    return f"{value:.4g}"


def _metadata(verdict: Verdict) -> dict[str, list[str]]:
    label = "malicious" if verdict.label == LABEL_MALICIOUS else "suspicious"
    meta = {
        "ml_label": [label],
        "ml_family": [verdict.family],
        "ml_final_score": [_num(verdict.final_score)],
        "ml_fast_score": [_num(verdict.fast_score)],
        "ml_score": [_num(verdict.ml_score)],
        "ml_family_scores": [f"{s.family}={_num(s.score)}" for s in verdict.family_scores],
        "ml_top_features": [
            f"{f.name}={_num(f.value)} weight={_num(f.weight)}" for f in verdict.top_features
        ],
        "ml_model_version": [verdict.model_version],
        "ml_verdict_id": [verdict.verdict_id],
    }
    if verdict.fast_rule:
        meta["ml_fast_rule"] = [verdict.fast_rule]
    if verdict.ml_family:
        meta["ml_model_family"] = [verdict.ml_family]
    # The schema wants at least one item in a list.
    return {k: v for k, v in meta.items() if v and all(v)}


def eve_alert(verdict: Verdict, record: FlowRecord, sensor_id: str) -> dict[str, Any]:
    """The EVE ``alert`` event of one verdict and the record it scored."""
    sig = signature_for(verdict)
    return {
        "timestamp": _iso(record.last_ts_ns or record.first_ts_ns),
        "event_type": "alert",
        **_five_tuple(record, sensor_id),
        "alert": {
            "action": "allowed",
            "gid": GID,
            "signature_id": sig.sid,
            "rev": sig.rev,
            "signature": sig.signature,
            "category": sig.category,
            "severity": 1 if verdict.label == LABEL_MALICIOUS else 2,
            "metadata": _metadata(verdict),
        },
        "flow": _flow_counts(record),
    }


def _end_reason(record: FlowRecord) -> str:
    """Why the flow was exported, as a word ("fin", "idle_timeout", ...)."""
    try:
        name = EndReason.Name(record.end_reason)
    except ValueError:  # a newer sensor's reason
        return "unspecified"
    return name.removeprefix("END_REASON_").lower()


def eve_flow(record: FlowRecord, verdict: Verdict, sensor_id: str) -> dict[str, Any]:
    """The EVE ``flow`` event of one scored flow (``alerted`` when its verdict alerts)."""
    first_s = record.first_ts_ns // 1_000_000_000
    last_s = (record.last_ts_ns or record.first_ts_ns) // 1_000_000_000
    return {
        "timestamp": _iso(record.last_ts_ns or record.first_ts_ns),
        "event_type": "flow",
        **_five_tuple(record, sensor_id),
        "flow": {
            **_flow_counts(record),
            "age": max(0, last_s - first_s),
            "alerted": verdict.label in (LABEL_SUSPICIOUS, LABEL_MALICIOUS),
            "reason": _end_reason(record),
            "state": "closed",
        },
    }


def eve_drop(
    *,
    action: str,
    network: str,
    family: str,
    reason: str,
    agent_id: str,
    ts: float,
) -> dict[str, Any]:
    """The EVE ``drop`` event of one firewall decision on ``network`` (a CIDR prefix):
    ``action`` is block, extend or unblock."""
    addr = network.split("/", 1)[0]
    family_sigs = SIGNATURES.get(family)
    sig = family_sigs[""] if family_sigs is not None else UNKNOWN
    seconds, frac = divmod(ts, 1.0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return {
        "timestamp": f"{stamp}.{int(frac * 1_000_000):06d}+0000",
        "event_type": "drop",
        "src_ip": addr,
        "host": agent_id,
        "drop": {"reason": f"{action} {network}: {reason}"},
        "verdict": {"action": "pass" if action == "unblock" else "drop"},
        "alert": {
            "action": "allowed" if action == "unblock" else "blocked",
            "gid": GID,
            "signature_id": sig.sid,
            "rev": sig.rev,
            "signature": sig.signature,
            "category": sig.category,
            "severity": 1,
            "metadata": {
                "ml_firewall_action": [action],
                "ml_blocked_prefix": [network],
                **({"ml_family": [family]} if family else {}),
            },
        },
    }


_STATS_FLOW_KEYS = {6: "tcp", 17: "udp", 1: "icmpv4", 58: "icmpv6"}


def eve_stats(uptime_s: float, alerts: int, flows_by_proto: Mapping[int, int]) -> dict[str, Any]:
    """The EVE ``stats`` event: uptime, alerts written, flows scored (total, per protocol)."""
    flow = {"total": sum(flows_by_proto.values())}
    for proto, key in _STATS_FLOW_KEYS.items():
        flow[key] = flows_by_proto.get(proto, 0)
    return {
        "timestamp": _iso(time.time_ns()),
        "event_type": "stats",
        "stats": {"uptime": int(uptime_s), "detect": {"alert": alerts}, "flow": flow},
    }


class EveWriter:
    """Appends EVE lines to one file, reopening it after a rotation.

    ``write`` takes scored batches: an alert per suspicious or malicious verdict, and with
    ``flows`` a flow event per record; ``stats_interval_s`` > 0 adds a stats event that
    often (checked at each write).
    """

    def __init__(
        self, path: str | Path, *, flows: bool = False, stats_interval_s: float = 0.0
    ) -> None:
        self.path = Path(path)
        self.flows = flows
        self.stats_interval_s = stats_interval_s
        self.written = 0
        self.alerts = 0
        self._flows_by_proto: dict[int, int] = {}
        self._started = time.monotonic()
        self._next_stats = self._started + stats_interval_s
        self._file: IO[str] | None = None
        self._inode = -1
        self._next_check = 0.0
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._inode = os.fstat(self._file.fileno()).st_ino
        except OSError as exc:
            raise MldError(
                f"cannot open the EVE log {self.path}: {exc.strerror}; check "
                "its setting (detector.eve_log, firewall.eve_log) and the folder's permissions"
            ) from exc

    def _reopen_if_rotated(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 1.0
        try:
            same = os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            log.info("EVE log %s was moved or removed: reopening it", self.path)
            self.close()
            self._open()

    def write(
        self,
        verdicts: Sequence[Verdict],
        records: Sequence[FlowRecord],
        sensor_id: str,
        alert: Sequence[bool] | None = None,
    ) -> int:
        """Write the events of one scored batch; returns how many alerts it held.

        ``alert``, if given, says which records may alert (the detector's once-per-flow
        choice, detector/raised.py); without it every suspicious or malicious one does."""
        events: list[dict[str, Any]] = []
        alerts = 0
        allowed = alert if alert is not None else [True] * len(records)
        for verdict, record, may in zip(verdicts, records, allowed, strict=True):
            if may and verdict.label in (LABEL_SUSPICIOUS, LABEL_MALICIOUS):
                events.append(eve_alert(verdict, record, sensor_id))
                alerts += 1
            if self.flows:
                events.append(eve_flow(record, verdict, sensor_id))
            proto = record.protocol
            self._flows_by_proto[proto] = self._flows_by_proto.get(proto, 0) + 1
        self.alerts += alerts
        if self.stats_interval_s > 0 and time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + self.stats_interval_s
            events.append(self.stats())
        self.write_events(events)
        return alerts

    def stats(self) -> dict[str, Any]:
        """A stats event with the counts so far."""
        return eve_stats(time.monotonic() - self._started, self.alerts, self._flows_by_proto)

    def write_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append ready-made events (one line each), flushed at once."""
        lines = [json.dumps(event, separators=(",", ":")) for event in events]
        if not lines:
            return
        self._reopen_if_rotated()
        assert self._file is not None
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        self.written += len(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
