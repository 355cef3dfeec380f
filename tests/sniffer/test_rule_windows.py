"""The fast rules' failure windows (port_scan, host_sweep) and rhythm windows (beacon) in
native code over whole batches (``RuleWindows``, native/fastwin.c) give, record for record,
the same doubles as the per-record Python definition (``FastRules._failures`` and
``FastRules._rhythm``, run by ``FastRules(native=False)``): on random batches that hit
every cap (failing sources, pending first failures, pair/port/beacon windows, last
starts), with records out of time order, ICMP echo sweeps, IPv4 and IPv6 addresses of the
same bytes, and a change of the beacon window in the middle of the stream. The real
captures are compared in test_batch_context.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from sniffer.batch_windows import address_keys
from sniffer.config import ContextConfig, FastRulesConfig
from sniffer.fast_rules import RULES, FastRules, failed_flows
from sniffer.records import PROTO_ICMP, PROTO_ICMPV6, FlowColumns, flow_columns
from tests.sniffer.events import T0, event, events

MS = 1_000_000

SOURCES = [f"10.0.0.{i}" for i in range(1, 9)] + [f"2001:db8::{i:x}" for i in range(1, 5)]
# "::a00:1" is 10.0.0.1's bytes in an IPv6 address of its own: the keys must not mix them.
SOURCES += ["::a00:1", "::ffff:10.0.0.2"]
DESTS = [f"192.0.2.{i}" for i in range(1, 7)] + ["2001:db8:1::1", "2001:db8:1::2"]
PORTS = [22, 80, 443, 3389, 8080, 53, 123, 4444]


def _random_batch(
    rng: np.random.Generator, n: int, t0: int, n_sources: int
) -> npt.NDArray[np.void]:
    """n flows of a few sources to a few services: failed probes, answered sessions,
    resets, unanswered UDP, ICMP echo with and without reply, starts at a loose rhythm."""
    parts = []
    sources = SOURCES + [f"172.16.{i // 250}.{i % 250 + 1}" for i in range(n_sources)]
    t = t0
    for _ in range(n):
        src = sources[int(rng.integers(len(sources)))]
        dst = DESTS[int(rng.integers(len(DESTS)))]
        kind = int(rng.integers(7))
        # Time moves on by about a second (a rhythm for the beacon windows) with jitter,
        # and a record may end before the one exported earlier.
        t += int(rng.integers(0, 2_000)) * MS
        start = t - int(rng.integers(0, 3_000)) * MS
        end = start + int(rng.integers(0, 4_000)) * MS
        common = {"ts": start, "last_ts_ns": end}
        port = PORTS[int(rng.integers(len(PORTS)))]
        if kind in (0, 1) and rng.random() < 0.5:  # a scanner's probe (v4 or v6)
            src = SOURCES[3 + 6 * int(rng.integers(2))]
            if rng.random() < 0.5:  # a port scan of one host
                port = int(rng.integers(1, 1024))
            else:  # a sweep of one port
                port, dst = 445, DESTS[int(rng.integers(len(DESTS)))]
        if kind == 0:  # SYN probe, unanswered
            parts.append(event(src, dst, dport=port, fwd_syn=1, **common))
        elif kind == 1:  # refused
            parts.append(event(src, dst, dport=port, fwd_syn=1, bwd_packets=1, bwd_rst=1, **common))
        elif kind in (2, 3):  # answered session; kind 2 from one of two implants to one C2
            if kind == 2:
                src, dst, port = SOURCES[int(rng.integers(2)) * 8], DESTS[0], 4444
            # Some repeat one small reply (a refused login, a 401 page), kept alive or not:
            # brute_force's attempts at the login and HTTP(S) ports.
            # (drawn from a generator of their own: the main stream stays as it was).
            reply = int(rng.integers(0, 5000))
            sub = np.random.default_rng(start)
            reply = reply if sub.random() < 0.5 else 420
            requests = int(sub.integers(1, 4)) if sub.random() < 0.7 else 40
            parts.append(
                event(
                    src, dst, dport=port, fwd_syn=1, fwd_ack=3, fwd_packets=5, bwd_packets=4,
                    fwd_psh=requests, bwd_psh=requests, fwd_payload_bytes=300 * requests,
                    bwd_payload_bytes=reply * requests, bwd_rst=int(sub.random() < 0.1),
                    **common,
                )
            )  # fmt: skip
        elif kind == 4:  # UDP, answered or not
            answered = int(rng.integers(2))
            parts.append(
                event(src, dst, dport=port, protocol=17, bwd_packets=answered,
                      fwd_payload_bytes=40, bwd_payload_bytes=80 * answered, **common)
            )  # fmt: skip
        else:  # ICMP echo (v4 or v6 by the source), answered or not
            v6 = ":" in src
            parts.append(
                event(src, dst if (":" in dst) == v6 else ("2001:db8:1::1" if v6 else "192.0.2.1"),
                      protocol=58 if v6 else 1, icmp_type=128 if v6 else 8,
                      bwd_packets=int(rng.integers(2)), **common)
            )  # fmt: skip
    return events(*parts)


def _inputs(
    flows: FlowColumns, rules: FastRulesConfig
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """What FastRules.score hands the windows: failed flows, the sweep port, and the
    records the rhythm scores (new flows only here)."""
    failed = failed_flows(flows)
    dst_port = flows["dst_port"].astype(np.int64)
    icmp = (flows["protocol"] == PROTO_ICMP) | (flows["protocol"] == PROTO_ICMPV6)
    sweep_port = np.where(icmp, -1, dst_port)
    scored = ~np.isin(dst_port, rules.beacon_ignore_ports) & ~icmp & ~failed
    return failed, sweep_port, scored


@pytest.mark.parametrize(
    ("context", "beacon_max", "n_sources"),
    [
        (ContextConfig(window_s=60.0), 64, 0),
        (ContextConfig(window_s=5.0, max_keys=6, max_entries_per_key=3, max_entries=40), 4, 30),
        (ContextConfig(window_s=2.0, max_keys=20, max_entries_per_key=8, max_entries=25), 3, 200),
        (ContextConfig(window_s=30.0, max_keys=3, max_entries_per_key=50, max_entries=500), 5, 8),
    ],
    ids=["defaults", "tiny-caps", "spoofed-sources", "three-keys"],
)
def test_native_failure_and_rhythm_windows_equal_the_python_definition(
    context: ContextConfig, beacon_max: int, n_sources: int
) -> None:
    # beacon_low 2: the regularities are computed past it, within the smallest depth (3).
    rules = dataclasses.replace(
        FastRulesConfig(), beacon_window_s=20.0, beacon_max_connections=beacon_max, beacon_low=2.0
    )
    batch, ref = FastRules(rules, context), FastRules(rules, context, native=False)
    assert batch._rule_windows is not None and ref._rule_windows is None
    rng = np.random.default_rng(context.max_keys * 7 + beacon_max)
    t = T0
    checked = 0
    nonzero = {"scan": 0, "sweep": 0, "beacon": 0, "regular": 0, "sizes": 0}
    for b in range(40):
        if b == 25:
            # A new beacon window length: the rhythm windows start afresh on both sides.
            rules = dataclasses.replace(rules, beacon_window_s=9.0)
            batch.reconfigure(rules)
            ref.reconfigure(rules)
        n = int(rng.integers(1, 300))
        flows = flow_columns(_random_batch(rng, n, t, n_sources), "x")
        t = int(flows["last_ts_ns"].max())
        failed, sweep_port, scored = _inputs(flows, rules)
        want = ref._failures(flows, failed, sweep_port)
        size = (flows["fwd_payload_bytes"] + flows["bwd_payload_bytes"]).astype(np.float64)
        want_rhythm = ref._rhythm(flows, size, scored)
        assert batch._rule_windows is not None
        got = batch._rule_windows.failures(
            address_keys(flows.src_addr),
            address_keys(flows.dst_addr),
            flows["dst_port"].astype(np.int64),
            sweep_port,
            flows["last_ts_ns"],
            failed,
        )
        got_rhythm = batch._rule_windows.rhythm(
            address_keys(flows.src_addr),
            address_keys(flows.dst_addr),
            flows["dst_port"].astype(np.int64),
            flows["protocol"].astype(np.int64),
            flows["first_ts_ns"],
            size,
            scored,
            rules.beacon_min_period_s,
            rules.beacon_low,
        )
        for name, g, w in zip(
            ("scan_ports", "sweep_hosts", "share", "beacon_count", "regularity", "sizes"),
            (*got, *got_rhythm),
            (*want, *want_rhythm),
            strict=True,
        ):
            assert g.tolist() == w.tolist(), (b, name)
        nonzero["scan"] += int(np.count_nonzero(want[0] > 1))
        nonzero["sweep"] += int(np.count_nonzero(want[1] > 1))
        nonzero["beacon"] += int(np.count_nonzero(want_rhythm[0] > 2))
        nonzero["regular"] += int(np.count_nonzero(want_rhythm[1] > 0))
        nonzero["sizes"] += int(np.count_nonzero(want_rhythm[2] > 0))
        # The state the two keep is the same size (the caps bite alike).
        for part in ("_pending", "_last_start", "_failing_sources"):
            assert len(getattr(batch, part)) == len(getattr(ref, part)), (b, part)
        for part in ("_pair_failures", "_port_failures", "_beacons"):
            got_w, want_w = getattr(batch, part), getattr(ref, part)
            assert (len(got_w), got_w.entries) == (len(want_w), want_w.entries), (b, part)
        checked += n
    assert checked > 1000
    # The streams exercised what they compare.
    assert min(nonzero.values()) > 0, nonzero
    if context.max_keys < 100:
        assert ref._py_pair_failures.evicted_keys + ref._py_beacons.evicted_keys > 0


def test_native_rules_score_like_the_python_rules() -> None:
    """The whole score() of both paths on the same random stream: every rule, every record
    (brute_force's login and HTTP(S) attempts among them)."""
    context = ContextConfig(window_s=10.0, max_keys=12, max_entries_per_key=6, max_entries=80)
    # Low thresholds, so that the small random stream (6 entries a key) scores the scans
    # and its loose rhythm too.
    rules = dataclasses.replace(
        FastRulesConfig(),
        port_scan_low=1.0,
        port_scan_high=5.0,
        host_sweep_low=1.0,
        host_sweep_high=5.0,
        beacon_window_s=30.0,
        beacon_low=2.0,
        beacon_high=8.0,
        beacon_regularity_low=0.05,
        beacon_regularity_high=0.6,
        brute_force_window_s=20.0,
        brute_force_low=1.0,
        brute_force_high=6.0,
        brute_force_http_low=1.0,
        brute_force_http_high=30.0,
        brute_force_reply_spread_low=0.5,
        brute_force_reply_spread_high=3.0,
    )
    batch, ref = FastRules(rules, context), FastRules(rules, context, native=False)
    rng = np.random.default_rng(11)
    t = T0
    scan_scored = beacon_scored = 0
    brute = {"login": 0, "http": 0}
    for _ in range(30):
        flows = flow_columns(_random_batch(rng, int(rng.integers(1, 200)), t, 20), "x")
        t = int(flows["last_ts_ns"].max())
        ctx = {
            name: np.zeros(len(flows))
            for name in ("dns_qname_mean_len", "dns_query_rate", "dns_qname_entropy")
        }
        got, want = batch.score(flows, ctx), ref.score(flows, ctx)
        for rule in RULES:
            assert got.per_rule[rule].tolist() == want.per_rule[rule].tolist(), rule
        assert got.rule == want.rule
        scan_scored += int(np.count_nonzero(want.per_rule["port_scan"]))
        scan_scored += int(np.count_nonzero(want.per_rule["host_sweep"]))
        beacon_scored += int(np.count_nonzero(want.per_rule["beacon"]))
        guessed = want.per_rule["brute_force"] > 0
        http = np.isin(flows["dst_port"], rules.brute_force_http_ports)
        brute["login"] += int(np.count_nonzero(guessed & ~http))
        brute["http"] += int(np.count_nonzero(guessed & http))
        if _ == 12:
            # A new brute force window length: the login windows start afresh on both sides.
            rules = dataclasses.replace(rules, brute_force_window_s=7.0)
            batch.reconfigure(rules)
            ref.reconfigure(rules)
    assert batch.fired == ref.fired and batch.scored == ref.scored
    assert scan_scored > 0 and beacon_scored > 0
    assert min(brute.values()) > 0, brute


def test_bad_shapes_are_refused() -> None:
    rules = FastRules(FastRulesConfig(), ContextConfig())
    assert rules._rule_windows is not None
    keys = address_keys([b"\x01\x02\x03\x04"] * 3)
    ints = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="destination keys"):
        rules._rule_windows.failures(keys, keys[:2], ints, ints, ints, np.zeros(3, bool))
    with pytest.raises(ValueError, match="start"):
        rules._rule_windows.rhythm(
            keys, keys, ints, ints, ints[:1], np.zeros(3), np.zeros(3, bool), 1.0, 4.0
        )
    with pytest.raises(ValueError, match="size"):
        rules._rule_windows.rhythm(
            keys, keys, ints, ints, ints, np.zeros(2), np.zeros(3, bool), 1.0, 4.0
        )
