"""Questions into SQL filters and intents (rag/question.py)."""

from __future__ import annotations

import pytest

from rag.question import parse
from tests.rag.conftest import utc

NOW = utc("2026-11-21T10:45:00Z")


def test_count_question_with_family_protocol_alerts_and_last_hour() -> None:
    p = parse("How many SYN flood alerts in the last hour?", NOW)
    assert p.intent == "count"
    f = p.filters
    assert (f.families, f.protos, f.min_label) == (("ddos",), (6,), 2)
    assert f.since_ts == NOW - 3600 and f.until_ts is None


def test_who_question_needs_no_address() -> None:
    p = parse("which address scanned the server?", NOW)
    assert p.intent == "who" and p.filters.families == ("scan",) and not p.filters.addrs


@pytest.mark.parametrize(
    ("question", "src", "dst", "either"),
    [
        ("what did 10.0.0.5 do?", (), (), ("10.0.0.5",)),
        ("ssh from 192.168.1.9 to 10.0.0.1", ("192.168.1.9",), ("10.0.0.1",), ()),
        ("attacks against 10.10.10.10", (), ("10.10.10.10",), ()),
        ("what did 2001:db8::5 do", (), (), ("2001:db8::5",)),
    ],
)
def test_addresses_and_direction(
    question: str, src: tuple[str, ...], dst: tuple[str, ...], either: tuple[str, ...]
) -> None:
    f = parse(question, NOW).filters
    assert (f.src, f.dst, f.addrs) == (src, dst, either)


def test_about_intent_keeps_benign_events() -> None:
    p = parse("what did 10.0.0.5 do?", NOW)
    assert p.intent == "about" and p.filters.min_label == 0


@pytest.mark.parametrize(
    ("text", "since", "until"),
    [
        ("alerts since 10:00", "2026-11-21T10:00:00Z", None),
        ("alerts between 08:30 and 09:15", "2026-11-21T08:30:00Z", "2026-11-21T09:15:00Z"),
        ("alerts today", "2026-11-21T00:00:00Z", None),
        ("alerts yesterday", "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"),
        ("alerts in the last 30 minutes", "2026-11-21T10:15:00Z", None),
        ("alerts since 23:00", "2026-11-20T23:00:00Z", None),
        ("alerts before 2pm", None, "2026-11-21T14:00:00Z"),
    ],
)
def test_time_ranges_in_utc(text: str, since: str | None, until: str | None) -> None:
    f = parse(text, NOW).filters
    assert f.since_ts == (utc(since) if since else None)
    assert f.until_ts == (utc(until) if until else None)


def test_ports_from_numbers_and_service_names() -> None:
    assert parse("traffic on port 8080 and 443", NOW).filters.ports == (443, 8080)
    assert parse("ssh brute force", NOW).filters.ports == (22,)
    # "dns tunnel" names the family, not every DNS flow.
    assert parse("dns tunnel", NOW).filters.ports == ()


def test_blocked_means_malicious_only_and_an_address_is_not_a_time() -> None:
    f = parse("blocked flows from 10.0.0.5", NOW).filters
    assert f.min_label == 3 and f.src == ("10.0.0.5",) and f.since_ts is None


def test_host_names_from_config_etc_hosts_and_the_lab(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rag.hosts import HostNames, read_etc_hosts

    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n10.9.9.9 backup-nas nas # the NAS\n")
    hosts = HostNames(
        {"printer": "10.0.0.77"},
        read_etc_hosts(hosts_file),
        {"workstation": ["203.0.113.20", "fd00:203::20"], "server": ["10.10.0.10"]},
    )
    p = parse(
        "summarize the DNS traffic from the workstation", NOW, hosts=hosts, seen=lambda a: True
    )
    assert p.filters.src == ("203.0.113.20", "fd00:203::20")
    assert any("workstation = 203.0.113.20" in u for u in p.understood)
    assert parse("what did the printer do?", NOW, hosts=hosts).filters.addrs == ("10.0.0.77",)
    assert parse("what did backup-nas do?", NOW, hosts=hosts).filters.addrs == ("10.9.9.9",)
    # A lab name is an everyday word unless the store has seen the host's address.
    p = parse("which address scanned the server?", NOW, hosts=hosts, seen=lambda a: False)
    assert p.filters.addrs == () and p.intent == "who"


def test_blocks_questions_are_about_the_firewall_decisions() -> None:
    assert parse("was anything blocked?", NOW).blocks == "list"
    assert parse("why was 203.0.113.66 blocked?", NOW).blocks == "why"
    assert parse("what is blocked now?", NOW).blocks == "now"
    assert parse("when was 203.0.113.66 unblocked?", NOW).blocks == "unblock"
    assert parse("did the firewall bloked anyone yesterday?", NOW).blocks == "list"
    # Blocked traffic is still the malicious events.
    p = parse("show blocked traffic to 10.10.10.10 in the last 30 minutes", NOW)
    assert p.intent != "blocks" and p.filters.min_label == 3


def test_misspellings_and_disagreements() -> None:
    p = parse("any brut force atacks yesterdy?", NOW)
    assert p.filters.families == ("bruteforce",) and p.filters.until_ts == utc(
        "2026-11-21T00:00:00Z"
    )
    d = parse("where did the rules and the models disagree today?", NOW)
    assert d.intent == "divergent" and d.filters.divergent


def test_follow_ups_keep_the_previous_question() -> None:
    from rag.question import follow_up, is_followup

    first = parse("how many scan alerts today?", NOW)
    assert is_followup("and from which hosts?")
    who = follow_up(first, "and from which hosts?", NOW)
    assert who.intent == "who" and who.filters.families == ("scan",)
    assert who.filters.since_ts == first.filters.since_ts
    before = follow_up(first, "what about yesterday?", NOW)
    assert before.intent == "count" and before.filters.families == ("scan",)
    assert before.filters.until_ts == utc("2026-11-21T00:00:00Z")
    assert not is_followup("which address scanned the server?")
