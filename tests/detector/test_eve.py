"""Suricata EVE output: every event type the detector and the firewall write validates
against Suricata's own EVE schema (the copy in the shared data), alerts and flows of one
flow share flow_id and community_id, Community IDs equal the reference implementation's,
and the signature ids are stable."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import communityid
import jsonschema
import pytest

from crypto_transport import TransportConfig
from detector.config import DetectorConfig, EventsOutput, ListenConfig, VerdictsOutput
from detector.eve import GID, SIGNATURES, community_id, eve_drop
from detector.families import FAST_RULE_FAMILY
from detector.service import DetectorService
from proto.events_pb2 import FlowBatch, FlowRecord
from sniffer.fast_rules import RULES
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import (
    ANY_PORT,
    BENIGN_PCAP,
    DETECTOR,
    SCAN_PCAP,
    SENSOR,
    Keys,
    capture_records,
    parse,
)
from tests.support import REPO, SHARED_DATA

MLD = str(REPO / ".venv/bin/mld")

SCHEMA_PATH = SHARED_DATA / "suricata-eve-schema.json"
# ICMPv6 and IPv6 TCP/UDP (android), ICMP (signal), besides the scan's TCP.
MIXED_PCAP = SHARED_DATA / "pcaps/ndpi/android.pcap"
ICMP_PCAP = SHARED_DATA / "pcaps/ndpi/signal.pcap"


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def records() -> list[FlowRecord]:
    return parse(capture_records(SCAN_PCAP, BENIGN_PCAP, MIXED_PCAP, ICMP_PCAP))


def _errors(validator: Any, event: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(event)
    ]


def test_every_detector_event_validates_against_suricatas_schema(
    tiny_bundle: TinyBundle, records: list[FlowRecord], validator: Any, tmp_path: Path
) -> None:
    eve = tmp_path / "eve.json"
    cfg = DetectorConfig(
        bundle_dir=str(tiny_bundle.path),
        model_cache_dir=str(tmp_path / "cache"),
        reload_interval_s=0,
        eve_log=str(eve),
        eve_flows=True,
        eve_stats_interval_s=1e-6,
        listen=ListenConfig(endpoint=ANY_PORT),
        verdicts=VerdictsOutput(enabled=False),
        events=EventsOutput(enabled=False),
    )
    service = DetectorService.from_config(
        cfg, TransportConfig(), Keys().ring(DETECTOR, SENSOR), DETECTOR, state_dir=str(tmp_path)
    )
    try:
        for start in range(0, len(records), 500):
            service.handle(
                FlowBatch(sensor_id=SENSOR, records=records[start : start + 500]), SENSOR
            )
    finally:
        service.close()
    events = [json.loads(line) for line in eve.read_text().splitlines()]
    kinds = Counter(e["event_type"] for e in events)
    assert kinds["flow"] == len(records)
    assert kinds["alert"] == service.counters["eve_alerts"] > 0
    assert kinds["stats"] >= 1
    bad = {i: _errors(validator, e) for i, e in enumerate(events) if _errors(validator, e)}
    assert bad == {}, [(events[i]["event_type"], errs) for i, errs in list(bad.items())[:3]]

    protos = {e["proto"] for e in events if e["event_type"] == "flow"}
    assert {"TCP", "UDP", "ICMP", "IPv6-ICMP"} <= protos
    flows = {(e["flow_id"], e["community_id"]) for e in events if e["event_type"] == "flow"}
    known_sids = {s.sid for family in SIGNATURES.values() for s in family.values()}
    for alert in (e for e in events if e["event_type"] == "alert"):
        # The alert joins its flow event, and Zeek's or Suricata's logs of the same traffic.
        assert (alert["flow_id"], alert["community_id"]) in flows
        assert alert["host"] == SENSOR
        body = alert["alert"]
        assert body["gid"] == GID and body["signature_id"] in known_sids and body["rev"] >= 1
        assert body["action"] == "allowed" and body["severity"] in (1, 2)
        meta = body["metadata"]
        assert meta["ml_family"][0] in SIGNATURES
        assert 0.0 <= float(meta["ml_final_score"][0]) <= 1.0
        assert all("=" in item for item in meta["ml_family_scores"])
    stats = [e["stats"] for e in events if e["event_type"] == "stats"]
    assert stats[-1]["detect"]["alert"] <= kinds["alert"]
    assert stats[-1]["flow"]["total"] <= len(records)


def test_firewall_drop_events_validate(validator: Any) -> None:
    for action in ("block", "extend", "unblock"):
        event = eve_drop(
            action=action,
            network="203.0.113.66/32",
            family="scan",
            reason="scan: final_score 0.97 >= 0.90; 1st offence, ttl 1x",
            agent_id="gw-1",
            ts=1_764_979_200.25,
        )
        assert _errors(validator, event) == []
        assert event["src_ip"] == "203.0.113.66"
        assert event["alert"]["action"] == ("allowed" if action == "unblock" else "blocked")
        assert event["alert"]["signature_id"] == SIGNATURES["scan"][""].sid
        assert event["timestamp"] == "2025-12-06T00:00:00.250000+0000"


def test_community_ids_equal_the_reference_implementation(records: list[FlowRecord]) -> None:
    reference = communityid.CommunityID()
    seen: Counter[int] = Counter()
    for rec in records:
        ours = community_id(rec.src_addr, rec.dst_addr, rec.protocol, rec.src_port, rec.dst_port)
        src, dst = _text(rec.src_addr), _text(rec.dst_addr)
        if rec.protocol == 6:
            tpl = communityid.FlowTuple.make_tcp(src, dst, rec.src_port, rec.dst_port)
        elif rec.protocol == 17:
            tpl = communityid.FlowTuple.make_udp(src, dst, rec.src_port, rec.dst_port)
        elif rec.protocol == 1:
            tpl = communityid.FlowTuple.make_icmp(src, dst, rec.src_port, rec.dst_port)
        elif rec.protocol == 58:
            tpl = communityid.FlowTuple.make_icmp6(src, dst, rec.src_port, rec.dst_port)
        else:
            continue
        assert ours == reference.calc(tpl), (src, dst, rec.protocol, rec.src_port, rec.dst_port)
        seen[rec.protocol] += 1
    assert all(seen[p] > 0 for p in (1, 6, 17, 58)), seen


def test_both_directions_of_a_flow_get_one_community_id() -> None:
    a, b = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
    assert community_id(a, b, 6, 40000, 443) == community_id(b, a, 6, 443, 40000)
    # An echo request and its reply; IPv4-mapped IPv6 hashes as the IPv4 address.
    assert community_id(a, b, 1, 8, 0) == community_id(b, a, 1, 0, 0)
    mapped = bytes(10) + b"\xff\xff" + a
    assert community_id(mapped, b, 17, 5353, 53) == community_id(a, b, 17, 5353, 53)


def test_signature_ids_are_unique_and_in_our_range() -> None:
    sids = [s.sid for family in SIGNATURES.values() for s in family.values()]
    assert len(sids) == len(set(sids))
    assert all(9_100_000 <= sid <= 9_100_999 for sid in sids)
    # Published ids never change meaning: pin the ones the README's examples use.
    assert SIGNATURES["scan"][""].sid == 9100200
    assert SIGNATURES["scan"]["port_scan"].sid == 9100201
    assert SIGNATURES["ddos"]["syn_flood"].sid == 9100101
    assert SIGNATURES["bruteforce"]["brute_force"].sid == 9100301
    assert SIGNATURES["scan"]["tiny_fragments"].sid == 9100203


def test_every_fast_rule_has_a_family_and_a_signature() -> None:
    """A fast rule the sniffer can name must map to a family and to that family's own sid,
    not fall back to the model's signature or the catch-all id."""
    for rule in RULES:
        family = FAST_RULE_FAMILY[rule]
        assert SIGNATURES[family][rule].signature.endswith(f"{rule} fast rule")


def _text(raw: bytes) -> str:
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def test_analyze_writes_eve_for_the_same_alerts(
    tiny_bundle: TinyBundle, validator: Any, tmp_path: Path
) -> None:
    """`mld detector analyze --eve FILE`: one alert event per non-benign flow of its JSON
    output, each valid against the schema, and with --eve-flows a flow event per flow."""
    pcap = SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap"
    config = tmp_path / "mld.yaml"
    config.write_text(f"node:\n  id: sensor-x\ndetector:\n  model_cache_dir: {tiny_bundle.cache}\n")
    eve = tmp_path / "eve.json"
    args = ["detector", "analyze", str(pcap), "--bundle", str(tiny_bundle.path)]
    done = subprocess.run(
        [MLD, "--config", str(config), *args, "--eve", str(eve), "--eve-flows", "-q"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    events = [json.loads(line) for line in eve.read_text().splitlines()]
    alerts = [e for e in events if e["event_type"] == "alert"]
    assert len(alerts) == sum(r["label"] != "benign" for r in rows) > 900
    assert sum(e["event_type"] == "flow" for e in events) == len(rows)
    assert all(_errors(validator, e) == [] for e in events)
    assert {e["host"] for e in events} == {"sensor-x"}
    by_flow = {(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]): r for r in rows}
    for alert in alerts[:50]:
        row = by_flow[(alert["src_ip"], alert["src_port"], alert["dest_ip"], alert["dest_port"])]
        assert alert["alert"]["metadata"]["ml_family"] == [row["family"]]
