"""Tests of the firewall policy: thresholds, allowlist, TTL growth, expiry, rate cap,
dry run, malformed verdicts and the memory bound. A fake clock drives time."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import replace
from typing import Any

import pytest

from base.errors import ConfigError
from firewall import FirewallConfig, Policy
from firewall.policy import REJECT_REASONS
from proto.events_pb2 import Verdict


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verdict(
    src: str = "203.0.113.7",
    score: float = 0.97,
    family: str = "scan",
    vid: str = "v1",
    verified: bool = True,
) -> Verdict:
    addr = ipaddress.ip_address(src)
    v = Verdict(verdict_id=vid, final_score=score, family=family, src_verified=verified)
    v.flow.ip_version = addr.version
    v.flow.src_addr = addr.packed
    return v


def policy(clock: Clock | None = None, **settings: Any) -> Policy:
    return Policy(replace(FirewallConfig(), **settings), clock=clock or Clock())


# --- thresholds -------------------------------------------------------------------------


def test_score_exactly_at_threshold_blocks_despite_float32() -> None:
    # 0.9 travels as float32 0.89999998; it still meets a threshold of 0.9.
    assert policy(block_threshold=0.9).decide(verdict(score=0.9)).action == "block"


def test_block_threshold_per_family() -> None:
    p = policy(block_threshold=0.9, block_threshold_per_family={"tunnel": 0.95})
    assert p.decide(verdict("198.51.100.1", 0.89, "scan")).outcome == "below_threshold"
    assert p.decide(verdict("198.51.100.2", 0.9, "scan")).action == "block"
    assert p.decide(verdict("198.51.100.3", 0.93, "tunnel")).action == "skip"
    assert p.decide(verdict("198.51.100.4", 0.95, "tunnel")).action == "block"
    assert p.decide(verdict("198.51.100.5", 0.99, "anomaly")).action == "block"
    assert p.counters()["below_threshold"] == 2
    assert p.counters()["block"] == 3


def test_block_decision_says_why() -> None:
    d = policy().decide(verdict(score=0.97, family="scan", vid="det-1:42"))
    assert (d.action, d.outcome, d.addr, d.prefix_len) == ("block", "pending", "203.0.113.7", 32)
    assert d.ttl_s == 300
    assert d.expires_ts == d.decided_ts + 300
    assert d.reason == "scan: final_score 0.97 >= 0.90; 1st offence, ttl 1x"
    assert d.verdict_ids == ("det-1:42",)
    assert d.acts


def test_ipv6_block_covers_the_senders_64_by_default() -> None:
    # An attacker owns its whole /64 and can send from any of its 2^64 addresses: a /128
    # block is lifted by moving to the next address.
    p = policy()
    d = p.decide(verdict("2001:db8:1:2::99"))
    assert (d.addr, d.prefix_len) == ("2001:db8:1:2::", 64)
    rotated = p.decide(verdict("2001:db8:1:2:ffff:1234:5678:9abc"))
    assert (rotated.action, rotated.network) == ("skip", "2001:db8:1:2::/64")
    assert rotated.outcome == "already_blocked"
    assert policy(prefix_len_v6=128).decide(verdict("2001:db8::5")).network == "2001:db8::5/128"


# --- allowlist --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    ["10.1.2.3", "2001:db8:aa::1", "::ffff:10.9.9.9", "192.0.2.1", "fd00::1", "127.0.0.1", "::1"],
)
def test_allowlisted_never_blocked_even_at_score_one(src: str) -> None:
    cfg = replace(
        FirewallConfig(), allowlist=("10.0.0.0/8", "2001:db8:aa::/48", "127.0.0.0/8", "::1/128")
    )
    p = Policy(cfg, allowlist_extra=("192.0.2.1", "fd00::1"), clock=Clock())
    for family in cfg.families:
        d = p.decide(verdict(src, 1.0, family))
        assert (d.action, d.outcome) == ("skip", "allowlisted")
    assert p.active() == []
    assert p.counters()["allowlisted"] == len(cfg.families)


def test_mapped_allowlist_entry_covers_plain_ipv4() -> None:
    p = Policy(FirewallConfig(), allowlist_extra=("::ffff:198.51.100.9",), clock=Clock())
    assert p.decide(verdict("198.51.100.9", 1.0)).outcome == "allowlisted"


def test_prefix_block_overlapping_allowlist_is_refused() -> None:
    # A /24 block would cover the gateway: refused, though the source itself is not listed.
    cfg = replace(FirewallConfig(), prefix_len_v4=24)
    p = Policy(cfg, allowlist_extra=("198.51.100.1",), clock=Clock())
    assert p.decide(verdict("198.51.100.200", 1.0)).outcome == "allowlisted"
    assert p.decide(verdict("198.51.101.200", 1.0)).network == "198.51.101.0/24"


# --- TTL growth, extend, expiry -----------------------------------------------------------


def test_repeat_offender_ttl_grows_and_is_capped() -> None:
    clock = Clock()
    p = policy(clock, ttl_base_s=300, ttl_growth=4.0, ttl_cap_s=10_000, repeat_window_s=86400)
    ttls = []
    for _ in range(5):
        d = p.decide(verdict())
        assert d.action == "block"
        ttls.append(d.ttl_s)
        clock.now = d.expires_ts + 1
        assert [u.action for u in p.expire()] == ["unblock"]
    assert ttls == [300, 1200, 4800, 10_000, 10_000]


def test_reason_names_offence_and_factor() -> None:
    clock = Clock()
    p = policy(clock)
    for _ in range(2):
        clock.now = p.decide(verdict()).expires_ts + 1
        p.expire()
    assert p.decide(verdict()).reason == "scan: final_score 0.97 >= 0.90; 3rd offence, ttl 16x"


def test_offences_outside_repeat_window_start_over() -> None:
    clock = Clock()
    p = policy(clock, repeat_window_s=3600)
    clock.now = p.decide(verdict()).expires_ts + 3601
    p.expire()
    assert p.decide(verdict()).ttl_s == 300


def test_active_block_is_extended_only_when_expiry_moves_later() -> None:
    clock = Clock()
    p = policy(clock, min_extend_s=60)
    first = p.decide(verdict(vid="a"))
    clock.now += 30
    assert p.decide(verdict(vid="b")).outcome == "already_blocked"
    clock.now += 60
    ext = p.decide(verdict(score=0.99, vid="c"))
    assert (ext.action, ext.outcome) == ("extend", "pending")
    assert ext.expires_ts == first.expires_ts + 90
    (block,) = p.active()
    assert (block.since, block.expires_ts) == (first.decided_ts, ext.expires_ts)
    assert block.final_score == pytest.approx(0.99)
    assert block.verdict_ids == ("a", "c")
    assert p.counters()["extend"] == 1


def test_expire_returns_unblocks_and_forgets() -> None:
    clock = Clock()
    p = policy(clock)
    a = p.decide(verdict("198.51.100.1"))
    clock.now += 100
    p.decide(verdict("198.51.100.2"))
    assert p.expire(a.expires_ts - 1) == []
    (unblock,) = p.expire(a.expires_ts)
    assert (unblock.action, unblock.addr, unblock.ttl_s) == ("unblock", "198.51.100.1", 0)
    assert unblock.reason == "expired (ttl 300s)"
    assert [b.addr for b in p.active()] == ["198.51.100.2"]


def test_operator_unblock_and_flush() -> None:
    p = policy()
    for i in range(3):
        p.decide(verdict(f"198.51.100.{i + 1}"))
    d = p.unblock("198.51.100.1")
    assert d is not None and (d.action, d.reason) == ("unblock", "unblocked by the operator")
    assert p.unblock("198.51.100.1") is None
    assert sorted(u.addr for u in p.flush()) == ["198.51.100.2", "198.51.100.3"]
    assert p.active() == []
    with pytest.raises(ConfigError, match="not an IP address"):
        p.unblock("nope")


# --- rate cap and dry run ---------------------------------------------------------------


def test_rate_cap_applies_to_new_blocks_only() -> None:
    clock = Clock()
    p = policy(clock, max_new_blocks_per_s=2.0, new_blocks_burst=3, min_extend_s=1)
    outcomes = [p.decide(verdict(f"198.51.100.{i}")).outcome for i in range(1, 6)]
    assert outcomes == ["pending"] * 3 + ["rate_limited"] * 2
    assert p.counters()["rate_limited"] == 2
    assert len(p.active()) == 3
    # Extending an active block needs no token.
    clock.now += 0.1
    assert p.decide(verdict("198.51.100.1")).outcome == "already_blocked"
    clock.now += 1.0
    assert p.decide(verdict("198.51.100.1")).action == "extend"
    # 1.1 s at 2/s refilled two tokens, but the extend took none.
    assert [p.decide(verdict(f"198.51.100.{i}")).outcome for i in (4, 5, 6)] == [
        "pending",
        "pending",
        "rate_limited",
    ]


def test_dry_run_decides_but_marks_everything_dry_run() -> None:
    clock = Clock()
    p = policy(clock, dry_run=True)
    d = p.decide(verdict())
    assert (d.action, d.outcome, d.ttl_s) == ("block", "dry_run", 300)
    assert not d.acts
    clock.now = d.expires_ts
    assert [(u.action, u.outcome) for u in p.expire()] == [("unblock", "dry_run")]
    assert p.counters()["dry_run"] == 2


# --- bad input --------------------------------------------------------------------------


def _bad(kind: str) -> Verdict:
    v = verdict()
    if kind == "short":
        v.flow.src_addr = b"\x01\x02\x03"
    elif kind == "mismatch":
        v.flow.ip_version = 6
    elif kind == "empty":
        v.flow.src_addr = b""
    elif kind == "unspecified":
        v.flow.src_addr = bytes(4)
    elif kind == "multicast":
        v.flow.src_addr = ipaddress.ip_address("224.0.0.1").packed
    elif kind == "broadcast":
        v.flow.src_addr = b"\xff\xff\xff\xff"
    return v


@pytest.mark.parametrize(
    "kind", ["short", "mismatch", "empty", "unspecified", "multicast", "broadcast"]
)
def test_bad_address_rejected_and_counted(kind: str) -> None:
    p = policy()
    d = p.decide(_bad(kind))
    assert (d.action, d.outcome, d.rejected) == ("reject", "rejected", "bad_address")
    assert d.reason.startswith("bad_address: ")
    assert p.counters()["rejected_bad_address"] == 1
    assert p.active() == []


@pytest.mark.parametrize("family", ["", "ransomware", "SCAN"])
def test_unknown_family_rejected_and_counted(family: str) -> None:
    p = policy()
    assert p.decide(verdict(family=family, score=1.0)).rejected == "unknown_family"
    assert p.counters()["rejected_unknown_family"] == 1


@pytest.mark.parametrize("score", [math.nan, -0.1, 1.5, math.inf])
def test_bad_score_rejected_and_counted(score: float) -> None:
    p = policy()
    assert p.decide(verdict(score=score)).rejected == "bad_score"
    assert p.counters()["rejected_bad_score"] == 1


@pytest.mark.parametrize("ttl", [0, -5, 604801, 10**12])
def test_absurd_ttl_rejected_and_counted(ttl: int) -> None:
    p = policy()
    assert p.decide(verdict(), ttl_s=ttl).rejected == "absurd_ttl"
    assert p.counters()["rejected_absurd_ttl"] == 1
    assert p.decide(verdict(), ttl_s=60).ttl_s == 60


def test_every_reject_reason_has_a_counter() -> None:
    counters = policy().counters()
    assert all(counters[f"rejected_{r}"] == 0 for r in REJECT_REASONS)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("block_threshold", 1.5, "block_threshold is 1.5"),
        ("block_threshold_per_family", {"ransomware": 0.5}, "unknown families"),
        ("ttl_cap_s", 10**9, "<= max_ttl_s"),
        ("ttl_growth", 0.5, "ttl_growth"),
        ("max_tracked", 0, "max_tracked"),
        ("allowlist", ("10.0.0.0/33",), "not an IP address or network"),
    ],
)
def test_unusable_settings_raise_config_error(setting: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Policy(replace(FirewallConfig(), **{setting: value}))


# --- memory bound -----------------------------------------------------------------------


def test_storm_of_distinct_addresses_stays_within_bound() -> None:
    clock = Clock()
    bound = 1000
    p = policy(
        clock,
        allowlist=(),
        max_tracked=bound,
        max_new_blocks_per_s=1e9,
        new_blocks_burst=10**9,
        new_blocks_per_prefix_per_s=1e9,
        new_blocks_per_prefix_burst=10**9,
    )
    for i in range(100_000):
        d = p.decide(verdict(str(ipaddress.IPv4Address(0x0A000000 + i)), 1.0))
        assert d.action == "block"
        if i % 1000 == 0:
            assert p.counters()["active"] <= bound and p.counters()["offenders"] <= bound
    counters = p.counters()
    assert (counters["active"], counters["offenders"]) == (bound, bound)
    assert counters["block"] == bound and counters["table_full"] == 100_000 - bound
    # A refused block is no offence on record: the history did not grow either.
    assert counters["evicted_offenders"] == 0
    # Nothing was lifted to make room: the first blocks are still the active ones.
    assert p.expire() == []
    assert [b.addr for b in p.active()][:2] == ["10.0.0.0", "10.0.0.1"]


def test_a_flood_of_forged_sources_does_not_lift_the_real_attackers_block() -> None:
    """The attack: once max_tracked blocks are active, verdicts about thousands of forged
    sources used to evict the oldest active blocks, which the next expire() lifted in the
    kernel. The real attacker, blocked first, was free again."""
    clock = Clock()
    p = policy(
        clock,
        max_tracked=500,
        max_new_blocks_per_s=1e9,
        new_blocks_burst=10**9,
        new_blocks_per_prefix_per_s=1e9,
        new_blocks_per_prefix_burst=10**9,
    )
    assert p.decide(verdict("198.51.100.66", 1.0)).action == "block"
    refused = []
    for i in range(5_000):
        forged = str(ipaddress.IPv4Address(0xC6120000 + i))  # 198.18.0.0/15, benchmark space
        d = p.decide(verdict(forged, 1.0))
        if d.outcome == "table_full":
            refused.append(d)
        clock.now += 0.001
    assert len(refused) == 5_000 - 499
    assert "refused, the active blocks stay" in refused[-1].reason
    assert p.counters()["table_full"] == 5_000 - 499
    assert all(u.addr != "198.51.100.66" for u in p.expire())
    assert "198.51.100.66" in {b.addr for b in p.active()}


def test_a_storm_in_one_network_does_not_spend_the_budget_of_the_others() -> None:
    """The attack: verdicts about many addresses of one /24 (forged, or a botnet's) took
    every token of the one global bucket, so the block of an attacker elsewhere came out
    rate_limited. Each /24 now has its own bucket."""
    clock = Clock()
    p = policy(clock, new_blocks_burst=200, new_blocks_per_prefix_burst=32)
    storm = [p.decide(verdict(f"192.0.2.{i}", 1.0)) for i in range(1, 255)]
    assert sum(d.action == "block" and d.outcome == "pending" for d in storm) == 32
    assert storm[-1].outcome == "rate_limited"
    assert "new blocks/s in 192.0.2.0/24" in storm[-1].reason
    real = p.decide(verdict("203.0.113.66", 1.0))
    assert (real.action, real.outcome) == ("block", "pending")
    # The bucket refills at new_blocks_per_prefix_per_s.
    clock.now += 1.0
    assert p.decide(verdict("192.0.2.254", 1.0)).outcome == "pending"


def test_storm_against_rate_cap_keeps_table_small() -> None:
    p = policy(max_tracked=100, new_blocks_burst=50, new_blocks_per_prefix_burst=10**6)
    for i in range(20_000):
        p.decide(verdict(str(ipaddress.IPv4Address(0x1A000000 + i)), 1.0))
    counters = p.counters()
    assert counters["block"] == 50 and counters["rate_limited"] == 20_000 - 50
    assert counters["active"] == 50 and counters["offenders"] <= 100


def test_unverified_source_is_not_blocked_but_counted_per_victim() -> None:
    """7,000 SYNs forged "from" 8.8.8.8 scored syn_flood 1.0: the verdict's source never
    completed a handshake (src_verified false), so it is skipped, not blocked."""
    pol = policy()
    forged = verdict("8.8.8.8", score=1.0, family="ddos", verified=False)
    forged.flow.dst_addr = ipaddress.ip_address("10.10.0.10").packed
    for _ in range(3):
        d = pol.decide(forged)
        assert (d.action, d.outcome) == ("skip", "unverified")
    assert "never completed a handshake, it may be forged" in d.reason
    assert "victim 10.10.0.10" in d.reason
    assert pol.active() == []
    assert pol.counters()["unverified"] == 3 and pol.counters()["block"] == 0
    assert pol.unverified_victims() == [("10.10.0.10", 3)]
    # The same source once it completed a handshake is blocked.
    assert pol.decide(verdict("8.8.8.8", score=1.0, family="ddos")).action == "block"


def test_block_unverified_true_blocks_them_and_allowlist_still_wins() -> None:
    pol = policy(block_unverified=True, allowlist=("192.0.2.0/24",))
    assert pol.decide(verdict("203.0.113.9", verified=False)).action == "block"
    d = pol.decide(verdict("192.0.2.9", verified=False))
    assert d.outcome == "allowlisted"


def test_unverified_victims_are_bounded() -> None:
    from firewall import policy as policy_module

    pol = policy()
    for i in range(policy_module.UNVERIFIED_VICTIMS_MAX + 5):
        v = verdict("198.51.100.1", verified=False)
        v.flow.dst_addr = (0x0A000000 + i).to_bytes(4, "big")
        pol.decide(v)
    assert pol.counters()["unverified_victims"] == policy_module.UNVERIFIED_VICTIMS_MAX


def test_block_unverified_is_not_a_live_setting() -> None:
    pol = policy()
    changed, _ = pol.reconfigure(replace(pol.config, block_unverified=True))
    assert changed == [] and pol.config.block_unverified is False
