"""The fast rules on the labelled attack captures (../shared/data/labels.csv).

Thresholds were set from first principles (sniffer/config.py), not fitted to these files;
this records what fires so a change in rules or engine shows up here.
"""

from __future__ import annotations

from collections import Counter

import pytest

from sniffer.config import SnifferConfig
from sniffer.pipeline import FlowPipeline
from sniffer.service import SnifferService
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

ATTACKS = SHARED_DATA / "pcaps" / "attacks"

pytestmark = pytest.mark.skipif(not ATTACKS.exists(), reason=f"needs the captures in {ATTACKS}")


def _rules(name: str, attacker: bytes | None) -> Counter[str]:
    cfg = SnifferConfig()
    fired: Counter[str] = Counter()

    def sink(done):  # type: ignore[no-untyped-def]
        # One count per flow, at its final record: interim records (sniffer.capture.
        # interim_s) of the same flow come before it.
        rows = zip(done.flows.src_addr, done.scores.rule, done.flows["interim"], strict=True)
        for src, rule, interim in rows:
            if not interim and (attacker is None or src == attacker):
                fired[rule] += 1

    SnifferService(
        PcapSource([ATTACKS / name], cfg.capture), FlowPipeline(cfg), None, (sink,)
    ).run()
    return fired


@pytest.mark.parametrize(
    ("capture", "attacker", "rule", "share"),
    [
        ("scan/masscan_tcp_0_1000.pcap", bytes([172, 31, 15, 102]), "port_scan", 0.9),
        ("scan/masscan_udp_0_1000.pcap", bytes([172, 31, 15, 102]), "port_scan", 0.9),
        ("ddos/syn_dominate_ecn_cwr.pcapng", None, "syn_flood", 0.9),
        # udp_flood's reflected-flow arm and the reflection rule (distinct reflectors)
        # measure the same flood; whichever scores higher names it.
        ("ddos/amp_udp_snmp.pcapng", None, "udp_flood|reflection", 0.9),
        ("ddos/amp_udp_isakmp.pcap", None, "udp_flood|reflection", 0.9),
        ("ddos/amp_udp_bacnet.pcapng", None, "udp_flood|reflection", 0.5),
        ("dns_tunnel/iodine_elastic.pcap", None, "dns_tunnel", 1.0),
    ],
)
def test_rule_fires_on_attack(
    capture: str, attacker: bytes | None, rule: str, share: float
) -> None:
    fired = _rules(capture, attacker)
    total = sum(fired.values())
    assert sum(fired[r] for r in rule.split("|")) >= share * total, fired


def test_dns_tunnel_flagged_by_an_interim_record_before_it_ends() -> None:
    """iodine's tunnel is one UDP flow that never goes idle: with interim records (default
    interim_s 5 s) the rule fires on an interim record while the flow goes on, not only
    when it ends (issue 18)."""
    cfg = SnifferConfig()
    seen: list[tuple[bool, str, int]] = []

    def sink(done):  # type: ignore[no-untyped-def]
        f = done.flows
        rows = zip(f["interim"].tolist(), done.scores.rule, f["last_ts_ns"].tolist(), strict=True)
        seen.extend(rows)

    path = ATTACKS / "dns_tunnel" / "iodine_elastic.pcap"
    SnifferService(PcapSource([path], cfg.capture), FlowPipeline(cfg), None, (sink,)).run()
    final_ts = max(ts for interim, _, ts in seen if not interim)
    flagged = [ts for interim, rule, ts in seen if interim and rule == "dns_tunnel"]
    assert flagged and min(flagged) < final_ts, seen
