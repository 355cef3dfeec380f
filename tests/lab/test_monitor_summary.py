"""lab/monitor.py's end-of-run summary text: an attack alerted but not blocked because its
source never completed a handshake reads "unverified", with the line that says why."""

from __future__ import annotations

from typing import Any

from lab.monitor import render_summary


def _attack(recipe: str, blocked: float | None, unverified: bool) -> dict[str, Any]:
    return {
        "recipe": recipe, "family": "ddos", "label": recipe, "attack_hosts": ["203.0.113.66"],
        "started_s": 10.0, "duration_s": 2.0, "detected_after_s": 0.2,
        "blocked_after_s": blocked, "dropped_after_s": None, "already_blocked": False,
        "not_blocked_unverified": unverified, "alert_families": ["ddos"], "spoofed": False,
    }  # fmt: skip


def test_unverified_attack_reads_detected_not_blocked() -> None:
    summary = {
        "duration_s": 60.0, "alerts": 3, "alerts_by_family": {"ddos": 3}, "blocks": 1,
        "dropped_packets": 0, "benign": {},
        "attacks": [_attack("syn_flood", None, True), _attack("port_scan_connect", 0.4, False)],
    }  # fmt: skip
    text = render_summary(summary)
    flood = next(line for line in text.splitlines() if line.startswith("syn_flood"))
    scan = next(line for line in text.splitlines() if line.startswith("port_scan_connect"))
    assert "unverified" in flood and "+0.2 s" in flood
    assert "+0.4 s" in scan and "unverified" not in scan
    assert "detected, not blocked: unverified source" in text


def test_no_unverified_line_when_every_attack_was_blocked() -> None:
    summary = {
        "duration_s": 60.0, "alerts": 1, "alerts_by_family": {"scan": 1}, "blocks": 1,
        "dropped_packets": 0, "benign": {}, "attacks": [_attack("port_scan", 0.4, False)],
    }  # fmt: skip
    assert "unverified" not in render_summary(summary)
