"""fast_rules.py: each rule on crafted flows, just under and well over its thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from sniffer.config import ContextConfig, FastRulesConfig
from sniffer.fast_rules import FastRules, ramp
from sniffer.records import flow_columns
from sniffer.source_context import SourceContextTracker
from tests.sniffer.events import T0, event, events, wire_name

MS = 1_000_000
RULES = FastRulesConfig()


def _score(ev: np.ndarray) -> tuple[np.ndarray, list[str], FastRules]:
    ctx_cfg = ContextConfig(window_s=60.0)
    flows = flow_columns(ev, "x")
    ctx = SourceContextTracker(ctx_cfg).update(flows)
    rules = FastRules(RULES, ctx_cfg)
    scores = rules.score(flows, ctx)
    return scores.score, scores.rule, rules


def test_ramp() -> None:
    assert ramp([0, 10, 15, 20, 99], 10, 20).tolist() == [0, 0, 0.5, 1, 1]
    with pytest.raises(ValueError):
        ramp(1, 2, 2)


def test_benign_flows_score_zero() -> None:
    score, rule, rules = _score(events(event(fwd_syn=1, fwd_ack=5, bwd_packets=5)))
    assert score.tolist() == [0.0] and rule == [""]
    assert rules.scored == 0


def _port_scan(n_ports: int) -> np.ndarray:
    return events(*(event(dport=p, ts=T0 + p * MS, fwd_syn=1) for p in range(1, n_ports + 1)))


def test_port_scan() -> None:
    score, rule, rules = _score(_port_scan(int(RULES.port_scan_low)))
    assert score.max() == 0.0
    score, rule, rules = _score(_port_scan(int(RULES.port_scan_high)))
    assert rule[-1] == "port_scan" and score[-1] == 1.0
    assert rules.fired["port_scan"] > 0
    # Closed ports answer with RST: those are failures too.
    rst = _port_scan(int(RULES.port_scan_high))
    rst["bwd_packets"], rst["bwd_rst"] = 1, 1
    score, rule, _ = _score(rst)
    assert rule[-1] == "port_scan" and score[-1] == 1.0


def test_many_answered_ports_on_one_host_is_no_port_scan() -> None:
    """Many services of one server used for real (data both ways): no failures, no scan."""
    used = _port_scan(int(RULES.port_scan_high))
    used["fwd_ack"], used["bwd_packets"] = 3, 3
    used["fwd_payload_bytes"], used["bwd_payload_bytes"] = 200, 2000
    assert _score(used)[0].max() == 0.0


def _sweep(n_hosts: int, **fields: int) -> np.ndarray:
    return events(
        *(
            event(dst=f"198.51.{i // 250}.{i % 250 + 1}", ts=T0 + i * MS, fwd_syn=1, **fields)
            for i in range(n_hosts)
        )
    )


def test_host_sweep() -> None:
    assert _score(_sweep(int(RULES.host_sweep_low)))[0].max() == 0.0
    score, rule, _ = _score(_sweep(int(RULES.host_sweep_high)))
    assert rule[-1] == "host_sweep" and score[-1] == 1.0


def test_answered_fan_out_is_no_scan() -> None:
    """A peer-to-peer client or a busy NAT: many hosts and ports, and they answer with
    data. Counted by destinations and ports alone it looked like a sweep and a port scan
    (the Gnutella client of issue 18: 721 of 1,311 flows malicious); on failures it is not."""
    answered = {"fwd_ack": 5, "fwd_payload_bytes": 300, "bwd_packets": 5, "bwd_payload_bytes": 900}
    peers = events(
        *(
            event(
                dst=f"198.51.{i // 250}.{i % 250 + 1}",
                dport=6346,  # Gnutella's port: one port, many peers
                ts=T0 + i * 50 * MS,
                fwd_syn=1,
                **answered,
            )
            for i in range(1000)
        )
    )
    score, rule, _ = _score(peers)
    assert score.max() == 0.0 and set(rule) == {""}
    # The same client with a third of its dials unanswered (peers gone offline) is still
    # no sweep: most of its flows to the port succeed.
    mixed = peers.copy()
    gone = np.arange(len(mixed)) % 3 == 0
    for name in ("fwd_ack", "fwd_payload_bytes", "bwd_packets", "bwd_payload_bytes"):
        mixed[name][gone] = 0
    score, rule, _ = _score(mixed)
    assert "host_sweep" not in rule and "port_scan" not in rule


def test_icmp_echo_sweep() -> None:
    """A ping sweep: echo requests to many hosts, few answer."""
    n = int(RULES.host_sweep_high)
    sweep = events(
        *(
            event(dst=f"10.9.{i // 250}.{i % 250 + 1}", protocol=1, ts=T0 + i * MS, icmp_type=8)
            for i in range(n)
        )
    )
    score, rule, _ = _score(sweep)
    assert rule[-1] == "host_sweep" and score[-1] == 1.0


def _syn_flood(per_s: float) -> np.ndarray:
    n = int(per_s * 60)
    return events(
        *(
            event(src=f"203.0.{i // 250}.{i % 250 + 1}", sport=1000 + i, ts=T0 + i * MS, fwd_syn=1)
            for i in range(n)
        )
    )


def test_syn_flood_from_spoofed_sources() -> None:
    score, _, _ = _score(_syn_flood(RULES.syn_flood_low))
    assert score.max() == 0.0
    score, rule, _ = _score(_syn_flood(RULES.syn_flood_high))
    assert rule[-1] == "syn_flood" and score[-1] == 1.0
    # A completed handshake to the same victim is not part of it.
    flood = _syn_flood(RULES.syn_flood_high)
    legit = event(src="192.0.2.200", ts=T0 + 10**9, fwd_syn=1, fwd_ack=3, bwd_packets=3)
    score, rule, _ = _score(events(flood, legit))
    assert score[-1] == 0.0


def _reflection(n: int, port: int = 53) -> np.ndarray:
    return events(
        *(
            event(
                src=f"203.0.{i // 250}.{i % 250 + 1}",
                sport=port,
                dport=30000 + i,
                protocol=17,
                ts=T0 + i * MS,
                fwd_bytes=1400,
            )
            for i in range(n)
        )
    )


def test_amplification_unsolicited_responses() -> None:
    # udp_flood's own arm (the distinct reflectors also make the reflection rule fire).
    low = _score(_reflection(int(RULES.amplification_low)))[2]
    assert low.fired["udp_flood"] == 0 and low.fired["reflection"] > 0
    score, rule, _ = _score(_reflection(int(RULES.amplification_high)))
    assert rule[-1] == "udp_flood" and score[-1] == 1.0
    # The same from a port that is no reflection service: nothing.
    assert _score(_reflection(int(RULES.amplification_high), port=40000))[0].max() == 0.0


def test_amplified_answers_to_a_spoofed_requester() -> None:
    def amp(n: int, ratio: float) -> np.ndarray:
        return events(
            *(
                event(
                    src="192.0.2.50",
                    dst=f"203.0.0.{i % 20 + 1}",  # few reflectors: no host sweep
                    sport=40000 + i,
                    dport=123,
                    protocol=17,
                    ts=T0 + i * MS,
                    fwd_bytes=100,
                    bwd_packets=10,
                    bwd_bytes=int(100 * ratio),
                )
                for i in range(n)
            )
        )

    n = int(RULES.amplification_high)
    assert _score(amp(n, RULES.amplification_ratio / 2))[0].max() == 0.0
    score, rule, _ = _score(amp(n, RULES.amplification_ratio * 5))
    assert rule[-1] == "udp_flood" and score[-1] == 1.0


def test_udp_packet_flood() -> None:
    def flood(pps: float) -> np.ndarray:
        return events(
            event(protocol=17, dport=9999, fwd_packets=int(pps * 60) // 2),
            event(protocol=17, sport=40001, dport=9999, ts=T0 + MS, fwd_packets=int(pps * 60) // 2),
        )

    assert _score(flood(RULES.udp_flood_low))[0].max() == 0.0
    score, rule, _ = _score(flood(RULES.udp_flood_high))
    assert rule[-1] == "udp_flood" and score[-1] == 1.0


def _dns(name: str, queries: int) -> np.ndarray:
    wire = wire_name(name)
    raw = np.zeros(48, dtype=np.uint8)
    raw[: min(48, len(wire))] = np.frombuffer(wire[:48], dtype=np.uint8)
    return event(
        protocol=17,
        dport=53,
        dns_queries=queries,
        dns_qname_len=min(255, len(wire)),
        dns_qname_len_sum=queries * len(wire),
        dns_qname=raw,
    )


def test_dns_tunnel() -> None:
    tunnel = "x7Kq2ZpR9vLm4TbW8nYc3HdF6gJs1QaE0uVo5iXk.t9Rw2Lp8Zq4MnB7vCj3Ks6Hd1Gf5.tun.example"
    score, rule, _ = _score(_dns(tunnel, 600))  # 10 queries/s
    assert rule == ["dns_tunnel"] and score[0] > 0.5
    # Ordinary lookups: short names, few queries.
    assert _score(_dns("www.example.com", 20))[0].max() == 0.0
    # Long random names, but only a couple of them: below the rate threshold.
    assert _score(_dns(tunnel, 2))[0].max() == 0.0


def _logins(
    n: int, port: int = 22, reply: int | list[int] = 2000, gap_ms: int = 500, psh: int = 2
) -> np.ndarray:
    """SSH-like logins: key exchange and a password or two; ``reply`` payload bytes from
    the server (about 2 KB when the password is refused, several KB with a session), one
    every ``gap_ms``; ``psh`` client pushes each (requests)."""
    replies = reply if isinstance(reply, list) else [reply] * n
    return events(
        *(
            event(
                sport=40000 + i,
                dport=port,
                ts=T0 + i * gap_ms * MS,
                last_ts_ns=T0 + i * gap_ms * MS + 200 * MS,
                fwd_packets=20,
                fwd_syn=1,
                fwd_ack=19,
                fwd_psh=psh,
                bwd_psh=psh + 1,
                fwd_payload_bytes=1600,
                bwd_packets=18,
                bwd_payload_bytes=replies[i],
            )
            for i in range(n)
        )
    )


def _brute(ev: np.ndarray, rules: FastRulesConfig = RULES) -> np.ndarray:
    ctx_cfg = ContextConfig(window_s=60.0)
    flows = flow_columns(ev, "x")
    ctx = SourceContextTracker(ctx_cfg).update(flows)
    return FastRules(rules, ctx_cfg).score(flows, ctx).per_rule["brute_force"]


def test_brute_force() -> None:
    assert _brute(_logins(int(RULES.brute_force_low))).max() == 0.0
    score, rule, _ = _score(_logins(int(RULES.brute_force_high)))
    assert rule[-1] == "brute_force" and score[-1] == 1.0
    # Refused connections (RST from the service) are failed attempts too.
    refused = _logins(int(RULES.brute_force_high), reply=0)
    refused["bwd_rst"] = 1
    assert _brute(refused)[-1] == 1.0


def test_slow_guessing_over_minutes_is_brute_force() -> None:
    """A guesser that waits for the service's failure delay (medusa or ncrack with one
    task against sshd, ~7 s a connection) makes 8 attempts a minute: under any per-minute
    count, over brute_force_window_s (5 minutes) 40 attempts. The old 60 s window read 9."""
    slow = _logins(40, gap_ms=7000)
    assert _brute(slow)[-1] == 1.0
    assert _brute(slow)[8] == 0.0  # the first minute alone stays quiet


@pytest.mark.parametrize(
    ("port", "reply"),
    [(21, 160), (3389, 2900), (445, 1100), (3306, 95), (5432, 120), (1433, 600), (2222, 1900)],
    ids=["ftp", "rdp", "smb", "mysql", "postgres", "mssql", "ssh-2222"],
)
def test_brute_force_on_other_services(port: int, reply: int) -> None:
    """FTP, RDP, SMB, databases, SSH on a second port: the same refused-login shape."""
    assert _brute(_logins(int(RULES.brute_force_high), port=port, reply=reply))[-1] == 1.0


def test_many_passwords_in_one_ftp_connection() -> None:
    """hydra against FTP keeps four connections and sends USER/PASS after USER/PASS in
    each (24 passwords, ~100 packets, 30-byte refusals): before, a flow of more than 64
    packets was no attempt at all and the capture's 96 guesses scored 0."""
    ev = events(
        *(
            event(sport=42000 + i, dport=21, ts=T0 + i * MS, last_ts_ns=T0 + 10_000 * MS,
                  fwd_packets=101, fwd_syn=1, fwd_ack=100, fwd_psh=48, fwd_payload_bytes=706,
                  bwd_packets=98, bwd_psh=49, bwd_payload_bytes=1371)
            for i in range(4)
        )
    )  # fmt: skip
    assert _brute(ev)[-1] == 1.0
    # An FTP session that lists and fetches (long answers on the control channel): none.
    listing = ev.copy()
    listing["bwd_payload_bytes"] = 49 * 400
    assert _brute(listing).max() == 0.0


def test_clocked_guessing_script_is_brute_force_not_beacon() -> None:
    """A script that tries a password every 2 s keeps a clock: its failed logins are
    brute_force's, never a C2 beacon (found with curl against an FTP service)."""
    ev = _logins(40, port=21, reply=83, gap_ms=2000)
    score, rule, rules = _score(ev)
    assert rule[-1] == "brute_force" and score[-1] == 1.0
    assert rules.fired["beacon"] == 0


def test_frequent_successful_logins_are_no_brute_force() -> None:
    """The lab client's scripted SSH logins (`id; ls -la; uptime`, one a second): each gets
    a session back (host keys, command output), more than a refused password's reply."""
    ok = _logins(int(RULES.brute_force_high), reply=RULES.brute_force_max_reply_bytes + 2000)
    assert _brute(ok).max() == 0.0


def test_varied_replies_are_no_guessing() -> None:
    """Many short sessions to a login port whose replies vary widely (a file server's
    listings, a database's query results) are not one refusal repeated: the spread of the
    replies takes the score down."""
    rng = np.random.default_rng(3)
    varied = rng.integers(50, 3000, 60).tolist()
    assert _brute(_logins(60, port=3306, reply=varied)).max() < 0.5
    assert _brute(_logins(60, port=3306, reply=160)).max() == 1.0


def _http(
    n: int, port: int = 80, requests: int = 1, reply: int | list[int] = 420, gap_ms: int = 250
) -> np.ndarray:
    """``n`` HTTP(S) connections of ``requests`` requests each (a client push each, plus
    the TLS handshake's two on 443), ``reply`` payload bytes per request (plus 3.5 KB of
    certificates on 443)."""
    tls = port in RULES.brute_force_tls_ports
    replies = reply if isinstance(reply, list) else [reply] * n
    return events(
        *(
            event(
                sport=41000 + i,
                dport=port,
                ts=T0 + i * gap_ms * MS,
                last_ts_ns=T0 + i * gap_ms * MS + 100 * MS,
                fwd_packets=4 + 2 * requests,
                fwd_syn=1,
                fwd_ack=3 + 2 * requests,
                fwd_psh=requests + (2 if tls else 0),
                fwd_payload_bytes=380 * requests + (600 if tls else 0),
                bwd_packets=2 + 2 * requests,
                bwd_psh=requests,
                bwd_payload_bytes=replies[i] * requests + (3500 if tls else 0),
            )
            for i in range(n)
        )
    )


def test_http_auth_guessing() -> None:
    """HTTP basic auth (a 401 page per guess), form POSTs over HTTPS, and a kept-alive
    session of 200 guesses: every request is an attempt. Ports 80/443 were not watched
    before (score 0)."""
    assert _brute(_http(150))[-1] == 1.0
    assert _brute(_http(150, port=443, reply=900))[-1] == 1.0
    assert _brute(_http(1, requests=200))[-1] == 1.0
    assert _brute(_http(20))[-1] == 0.0  # 20 requests: under brute_force_http_low


def test_browsers_and_pollers_are_no_http_guessing() -> None:
    """A browser's connections to one site (replies from 300 B to 60 KB), an API client
    polling one endpoint once a second for a minute (the same small reply; 0.33, under the
    alert), a kept-alive page load of 40 requests with small and large replies: none
    alerts."""
    rng = np.random.default_rng(5)
    pages = np.exp(rng.uniform(np.log(300), np.log(60000), 60)).astype(int).tolist()
    assert _brute(_http(60, port=443, reply=pages)).max() < 0.5
    poller = _brute(_http(60, reply=300, gap_ms=1000))
    assert 0 < poller.max() < 0.34
    assert _brute(_http(1, requests=40, reply=5000)).max() == 0.0
    # A video call's TLS signalling (zoom.pcap of the nDPI captures): 77 client records
    # of ~600 bytes in 2 s and 31 small answers; the lone false alert of this rule there.
    call = _http(1, port=443, requests=77, reply=75)
    call["bwd_psh"] = 31
    assert _brute(call).max() == 0.0
    assert _brute(_http(100, reply=RULES.brute_force_http_max_reply_bytes + 1)).max() == 0.0


S = 1_000_000_000


def _connections(
    gaps_s: list[float], dport: int = 443, protocol: int = 6, sizes: list[int] | None = None
) -> np.ndarray:
    """Answered connections of one pair, started after the given gaps (seconds); ``sizes``:
    the server's payload bytes of each (300 when not given)."""
    starts = np.cumsum([0.0, *gaps_s])
    replies = sizes if sizes is not None else [300] * len(starts)
    return events(
        *(
            event(
                sport=50000 + i,
                dport=dport,
                protocol=protocol,
                ts=T0 + int(t * S),
                fwd_packets=8,
                fwd_syn=1,
                fwd_ack=7,
                fwd_payload_bytes=400,
                bwd_packets=6,
                bwd_payload_bytes=replies[i],
            )
            for i, t in enumerate(starts.tolist())
        )
    )


def _beacon(ev: np.ndarray) -> tuple[np.ndarray, list[str]]:
    ctx_cfg = ContextConfig(window_s=60.0)
    flows = flow_columns(ev, "x")
    ctx = SourceContextTracker(ctx_cfg).update(flows)
    scores = FastRules(RULES, ctx_cfg).score(flows, ctx)
    return scores.per_rule["beacon"], scores.rule


def test_beacon_with_jitter() -> None:
    """A C2 implant checking in every 60 s with 20% jitter (Cobalt Strike style: each sleep
    shortened by up to 20%), over TLS: the rhythm, not the bytes, gives it away."""
    rng = np.random.default_rng(7)
    gaps = (60.0 * (1 - 0.2 * rng.random(29))).tolist()
    score, rule = _beacon(_connections(gaps))
    assert score[-1] == 1.0 and rule[-1] == "beacon"
    # The first check-ins are too few to tell.
    assert score[: int(RULES.beacon_low)].max() == 0.0


@pytest.mark.parametrize("period", [5.0, 60.0, 300.0])
@pytest.mark.parametrize("jitter", [0.1, 0.3])
def test_jittered_beacons_from_seconds_to_minutes(period: float, jitter: float) -> None:
    """TLS check-ins every 5 s to 5 min with a uniform jitter of +-10% or +-30% of the
    period, TLS record sizes varying by a few bytes, one check-in missed: alerted within
    the hour (a 5-minute implant from its 8th check-in). With std/mean and the old count
    ramp (6 to 20) the 30% jitter read 0.83 (ramp 0.63) and a 5-minute beacon never got
    past 13 connections an hour: under the alert."""
    rng = np.random.default_rng(int(period * 10 + jitter * 100))
    n = min(int(3600 / period), 60)
    gaps = (period * (1 + jitter * rng.uniform(-1, 1, n))).tolist()
    gaps[n // 2] += period  # a missed check-in (the host slept, a packet was lost)
    sizes = (1200 + rng.integers(-16, 17, n + 1)).tolist()
    score, rule = _beacon(_connections(gaps, sizes=sizes))
    assert score[: int(RULES.beacon_low)].max() == 0.0
    assert score[-1] >= 0.5 and rule[-1] == "beacon", score
    assert np.argmax(score >= 0.5) <= 8


def test_beacon_size_regularity() -> None:
    """The same clock with payload sizes all over the place (a poller whose replies
    change, as a clocked application in the nDPI captures does every 30.1 s) is no
    beacon; alike check-ins are."""
    rng = np.random.default_rng(9)
    alike = _beacon(_connections([30.0] * 20))[0]
    spread = np.exp(rng.uniform(np.log(200), np.log(200_000), 21)).astype(int).tolist()
    varied = _beacon(_connections([30.0] * 20, sizes=spread))[0]
    assert alike[-1] == 1.0 and varied[-1] == 0.0 and varied.max() < 0.5


def test_benign_polling_is_no_beacon() -> None:
    """Benign traffic with repetition but no clock stays under the alert threshold (0.5);
    a benign poller that keeps a clock is, by its rhythm, a beacon: it alerts (c2 never
    blocks on its fast rule alone by default, detector.thresholds.fast_rule_alone_blocks)."""
    rng = np.random.default_rng(3)
    # A person browsing one site: gaps drawn from an exponential (no clock).
    browsing = _beacon(_connections(rng.exponential(20.0, 60).tolist()))[0]
    assert browsing.max() < 0.5
    # Keepalive-driven reconnects and a client that retries with backoff: doubling gaps.
    backoff = _beacon(_connections([2.0 * 2**i for i in range(10)]))[0]
    assert backoff.max() < 0.5
    # NTP polling every 64 s: a port that polls by design, never scored.
    assert _beacon(_connections([64.0] * 40, dport=123, protocol=17))[0].max() == 0.0
    # Retries and floods repeat faster than beacon_min_period_s: no rhythm score.
    assert _beacon(_connections([0.05] * 200))[0].max() == 0.0
    # A monitoring check every 60 s: a clock, alerted.
    assert _beacon(_connections([60.0] * 20))[0][-1] == 1.0


def test_memory_stays_bounded_under_a_spoofed_source_flood() -> None:
    """Every flow from a new (spoofed) source, answered or not: the failure windows, their
    pending first entries and the beacon starts stay within context.max_keys."""
    cap = 500
    ctx_cfg = ContextConfig(window_s=60.0, max_keys=cap, max_entries=10 * cap)
    rules = FastRules(RULES, ctx_cfg)
    tracker = SourceContextTracker(ctx_cfg)
    for batch in range(6):
        ev = events(
            *(
                event(
                    src=f"10.{batch}.{i // 250}.{i % 250 + 1}",
                    sport=1024 + i,
                    dport=80 + i % 2,
                    ts=T0 + (batch * 1000 + i) * MS,
                    fwd_syn=1,
                    # Half answered (beacon starts), half unanswered (failures).
                    bwd_packets=i % 2,
                    fwd_payload_bytes=100 * (i % 2),
                    bwd_payload_bytes=100 * (i % 2),
                )
                for i in range(1000)
            )
        )
        flows = flow_columns(ev, "x")
        rules.score(flows, tracker.update(flows))
    assert len(rules._pending) <= cap
    assert len(rules._last_start) <= cap
    for windows in (rules._pair_failures, rules._port_failures, rules._beacons):
        assert len(windows) <= cap and windows.entries <= 10 * cap


def test_tiny_fragments() -> None:
    """Flows that carry tiny or overlapping fragments score by how many the source sent in
    the window; flows of the same source without any keep 0 for this rule."""
    c = RULES
    plain = event(dport=80, ts=T0, fwd_syn=1, fwd_ack=3, bwd_packets=3)
    one = event(dport=81, ts=T0 + MS, tiny_frag_count=1, frag_count=1)
    score, rule, rules = _score(events(plain, one))
    assert score.tolist() == [
        0.0,
        pytest.approx(ramp(1, c.tiny_fragments_low, c.tiny_fragments_high)),
    ]
    assert rule == ["", "tiny_fragments"]
    many = [
        event(dport=100 + i, ts=T0 + i * MS, tiny_frag_count=1, overlap_frag_count=i % 2)
        for i in range(int(c.tiny_fragments_high))
    ]
    score, rule, rules = _score(events(*many))
    assert score[-1] == 1.0 and rule[-1] == "tiny_fragments"
    assert rules.fired["tiny_fragments"] == len(many)


def test_small_ints_is_np_isin() -> None:
    """SmallInts (the fast rules' port and ICMP type sets, one table look-up) gives
    np.isin's booleans for every column type the rules pass, out-of-range and negative
    values included, and falls back to np.isin for sets it cannot table."""
    from sniffer.fast_rules import SmallInts

    rng = np.random.default_rng(5)
    cols = [
        rng.integers(0, 65536, 5000).astype(np.uint32),
        rng.integers(0, 65536, 5000).astype(np.uint16),
        rng.integers(-5, 70000, 5000).astype(np.int64),
        np.array([0, 1, 65535, 65536, 2**31, 2**32 - 1], dtype=np.uint32),
        np.array([-1, 0, 22, 65535, 65536, 2**40, -(2**40)], dtype=np.int64),
        rng.integers(0, 256, 300).astype(np.uint8),
        np.array([22.0, 23.5, -1.0]),
        np.array([], dtype=np.uint32),
    ]
    for values in [(), (0,), (22, 23, 2323, 65535), (8, 128), (-3, 22, 70000)]:
        member = SmallInts(values)
        for col in cols:
            want = np.isin(col, np.array(values, dtype=np.int64))
            got = member(col)
            assert got.dtype == np.bool_ and got.shape == col.shape
            assert (got == want).all(), (values, col.dtype)
