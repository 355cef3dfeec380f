"""Alerts as JSON lines in an EVE-like shape, for log shippers (Filebeat, Vector, ...).

One line per verdict labelled suspicious or malicious, appended to ``detector.eve_log``::

    {"timestamp": "2026-11-21T10:00:03.512004+0000", "flow_id": 5144898365431037690,
     "event_type": "alert", "src_ip": "172.31.15.102", "src_port": 51406,
     "dest_ip": "198.124.152.15", "dest_port": 22, "proto": "TCP", "sensor": "sensor-1",
     "alert": {"signature": "ML Defender scan: port_scan", "category": "scan",
               "severity": 1, "label": "malicious"},
     "ml": {"family": "scan", "final_score": 0.98, "fast_score": 0.98,
            "fast_rule": "port_scan", "ml_score": 0.91, "scores": {"ddos": 0.01, ...},
            "top_features": [{"name": ..., "value": ..., "weight": ...}],
            "model_version": ..., "verdict_id": ...},
     "flow": {"start": ..., "end": ..., "pkts_toserver": 1, "pkts_toclient": 0,
              "bytes_toserver": 60, "bytes_toclient": 0}}

The field names follow Suricata's EVE (``timestamp``, ``flow_id``, ``src_ip``, ``dest_ip``,
``proto``, ``event_type``, ``alert.signature/category/severity``, ``flow.*``), so tools that
read EVE find them; ``ml`` holds what only ML Defender has. Severity is 1 for malicious
(sent to the firewall) and 2 for suspicious. ``timestamp`` is the flow's last packet.

Each batch is written and flushed at once. The file is reopened when it was moved or
removed (logrotate without copytruncate), checked at most once a second.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from base.errors import MldError
from proto.events_pb2 import LABEL_MALICIOUS, LABEL_SUSPICIOUS, FlowRecord, Verdict

__all__ = ["EveWriter", "eve_alert"]

log = logging.getLogger(__name__)

_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP"}


def _iso(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}+0000"


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw)) if raw else ""


def eve_alert(verdict: Verdict, record: FlowRecord, sensor_id: str) -> dict[str, Any]:
    """The EVE-like alert of one verdict and the record it scored."""
    label = "malicious" if verdict.label == LABEL_MALICIOUS else "suspicious"
    rule = f": {verdict.fast_rule}" if verdict.fast_rule else ""
    return {
        "timestamp": _iso(record.last_ts_ns or record.first_ts_ns),
        "flow_id": record.flow_id,
        "event_type": "alert",
        "src_ip": _addr(record.src_addr),
        "src_port": record.src_port,
        "dest_ip": _addr(record.dst_addr),
        "dest_port": record.dst_port,
        "proto": _PROTO.get(record.protocol, str(record.protocol)),
        "sensor": sensor_id,
        "alert": {
            "signature": f"ML Defender {verdict.family}{rule}",
            "category": verdict.family,
            "severity": 1 if verdict.label == LABEL_MALICIOUS else 2,
            "label": label,
        },
        "ml": {
            "family": verdict.family,
            "final_score": round(verdict.final_score, 4),
            "fast_score": round(verdict.fast_score, 4),
            "fast_rule": verdict.fast_rule,
            "ml_score": round(verdict.ml_score, 4),
            "ml_family": verdict.ml_family,
            "scores": {s.family: round(s.score, 4) for s in verdict.family_scores},
            "top_features": [
                {"name": f.name, "value": f.value, "weight": round(f.weight, 4)}
                for f in verdict.top_features
            ],
            "model_version": verdict.model_version,
            "verdict_id": verdict.verdict_id,
        },
        "flow": {
            "start": _iso(record.first_ts_ns),
            "end": _iso(record.last_ts_ns),
            "pkts_toserver": record.fwd.packets,
            "pkts_toclient": record.bwd.packets,
            "bytes_toserver": record.fwd.bytes,
            "bytes_toclient": record.bwd.bytes,
        },
    }


class EveWriter:
    """Appends alert lines to one file, reopening it after a rotation."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
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
                f"cannot open the alert log {self.path}: {exc.strerror}; check "
                "detector.eve_log and the folder's permissions"
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
            log.info("alert log %s was moved or removed: reopening it", self.path)
            self.close()
            self._open()

    def write(
        self, verdicts: Sequence[Verdict], records: Sequence[FlowRecord], sensor_id: str
    ) -> int:
        """Write the alerts (suspicious and malicious) among ``verdicts``; returns how many."""
        lines = [
            json.dumps(eve_alert(v, r, sensor_id), separators=(",", ":"))
            for v, r in zip(verdicts, records, strict=True)
            if v.label in (LABEL_SUSPICIOUS, LABEL_MALICIOUS)
        ]
        if not lines:
            return 0
        self._reopen_if_rotated()
        assert self._file is not None
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        self.written += len(lines)
        return len(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
