"""The fast detector: a handful of threshold rules over each record and its context.

Each rule gives a record a score in [0, 1] that ramps linearly with one measured value
``x`` between two configured thresholds::

    score = clip((x - low) / (high - low), 0, 1)     0 at or below low, 1 at or above high

so a value just over ``low`` gives a low score rather than an alarm, and the thresholds
read as "starts to look odd" and "certainly odd". A record's fast_score is the highest rule
score and fast_rule names that rule ("" when every rule gave 0). A rule only scores the
records that take part in what it measures (a legitimate flow to a flooded server keeps 0).

Rules, the value x each measures over the context window (``window_s``), and the
records each scores:

* ``syn_flood``: SYN-only flows (SYN, no ACK from the initiator) toward the destination
  address, per second; scores SYN-only TCP flows.
* ``port_scan``: distinct destination ports of the source (SourceContext); all its flows.
* ``host_sweep``: distinct destination addresses of the source (SourceContext); likewise.
* ``udp_flood``: UDP packets toward the destination address per second, or reflected flows
  toward the victim (below), whichever scores higher; scores UDP flows.
* ``dns_tunnel``: the lower of the ramps of mean name length and query rate, times the
  entropy ramp floored at 0.5 (SourceContext); scores flows with DNS queries.
* ``brute_force``: short TCP flows (at most ``brute_force_max_packets`` from the
  initiator) from the source to one login service (address and port); scores such flows.
* ``tiny_fragments``: tiny and overlapping IP fragments (FlowRecord.tiny_frag_count +
  overlap_frag_count) from the source; scores the flows that carry any. No ordinary stack
  sends them: they are how scans and attacks hide from filters and IDSs (``nmap -f``),
  so a few within the window are enough (a scan family rule).

Reflection (amplification): a UDP flow whose *initiator* port is a reflection service port
(DNS 53, NTP 123, SSDP 1900, memcached 11211, ...) is a response nobody on this side asked
for (the victim's address was spoofed in the requests); one whose responder port is such a
port and whose responder sent at least ``amplification_ratio`` times the requester's bytes
is an amplified answer, and its victim is the initiator. Either counts as one reflected
flow toward its victim.

The destination-keyed windows live here (SourceContext only has the source's view) and
use the same record-time windows and caps as the source context.

Interim records (issue 18; ``sniffer/interim.py``): given the records' ``previous``, a
flow adds to the windows once for what it is (a SYN-only flow, a login attempt) at its
first record, and only the growth of its counters (UDP packets, tiny and overlapping
fragments) at later ones, as in the source context.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt

from sniffer.config import ContextConfig, FastRulesConfig
from sniffer.interim import Previous
from sniffer.records import PROTO_TCP, PROTO_UDP, Array, FlowColumns
from sniffer.sliding_window import SlidingWindows

__all__ = ["RULES", "FastRules", "FastScores", "ramp"]

RULES = (
    "syn_flood",
    "port_scan",
    "host_sweep",
    "udp_flood",
    "dns_tunnel",
    "brute_force",
    "tiny_fragments",
)

Floats = npt.NDArray[np.float64]


def ramp(x: npt.ArrayLike, low: float, high: float) -> Floats:
    """0 at or below ``low``, 1 at or above ``high``, linear between."""
    if high <= low:
        raise ValueError(f"a ramp needs low < high, got {low} and {high}")
    return np.clip((np.asarray(x, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


class FastScores:
    """Per-record rule scores: ``score`` (max over rules) and ``rule`` (its name or "")."""

    def __init__(self, per_rule: dict[str, Floats]) -> None:
        self.per_rule = per_rule
        stacked = np.stack([per_rule[r] for r in RULES])
        best = np.argmax(stacked, axis=0)
        self.score: Floats = stacked.max(axis=0) if len(best) else np.zeros(0)
        names = np.array(RULES, dtype=object)[best]
        self.rule: list[str] = np.where(self.score > 0, names, "").tolist()


class FastRules:
    """Scores records with the rules above; keeps per-destination windows and counters."""

    def __init__(self, rules: FastRulesConfig, context: ContextConfig) -> None:
        self.config = rules
        self.window_s = context.window_s

        def windows(n_sums: int) -> SlidingWindows:
            return SlidingWindows(
                window_s=context.window_s,
                n_sums=n_sums,
                n_distinct=0,
                max_keys=context.max_keys,
                max_entries_per_key=context.max_entries_per_key,
                max_entries=context.max_entries,
            )

        # Per destination address: SYN-only flows, UDP packets toward it.
        self._to_dst = windows(2)
        # Per victim address: reflected flows.
        self._reflected = windows(0)
        # Per (source, destination, port): short flows to a login service.
        self._logins = windows(0)
        # Per source: tiny and overlapping fragments.
        self._evasive = windows(1)
        self._set_ports(rules)
        # Records whose fast_rule was each rule, and records scored > 0 at all.
        self.fired: Counter[str] = Counter()
        self.scored = 0

    def _set_ports(self, rules: FastRulesConfig) -> None:
        self._amp_ports = np.array(sorted(rules.amplification_ports), dtype=np.int64)
        self._login_ports = np.array(sorted(rules.brute_force_ports), dtype=np.int64)

    def reconfigure(self, rules: FastRulesConfig) -> None:
        """Score with ``rules`` from the next batch on (a change from etcd). The windows
        and counters stay: what a source did before the change still counts after it."""
        rules.check()
        self.config = rules
        self._set_ports(rules)

    def score(
        self, flows: FlowColumns, context: dict[str, Array], previous: Previous | None = None
    ) -> FastScores:
        """Scores of ``flows`` (in export order) given their SourceContext columns and what
        earlier records of the same flows counted (None: every record is a new flow)."""
        prev = previous if previous is not None else Previous.none(flows)
        first = prev.first
        c = self.config
        n = len(flows)
        proto = flows["protocol"]
        src_port = flows["src_port"].astype(np.int64)
        dst_port = flows["dst_port"].astype(np.int64)
        fwd_bytes = flows["fwd_bytes"].astype(np.float64)
        bwd_bytes = flows["bwd_bytes"].astype(np.float64)
        tcp = proto == PROTO_TCP
        udp = proto == PROTO_UDP
        syn_only = tcp & (flows["fwd_syn_count"] > 0) & (flows["fwd_ack_count"] == 0)
        udp_packets = np.where(
            udp, flows["fwd_packets"].astype(np.float64) - prev.values["fwd_packets"], 0
        )
        unsolicited = udp & np.isin(src_port, self._amp_ports)
        amplified = (
            udp
            & np.isin(dst_port, self._amp_ports)
            & (bwd_bytes > 0)
            & (bwd_bytes >= c.amplification_ratio * fwd_bytes)
        )
        login = (
            tcp
            & np.isin(dst_port, self._login_ports)
            & (flows["fwd_packets"] <= c.brute_force_max_packets)
        )

        evasive = (flows["tiny_frag_count"] + flows["overlap_frag_count"]).astype(np.float64)
        evasive -= prev.values["tiny_frag_count"] + prev.values["overlap_frag_count"]
        evasive_sum = np.zeros(n)
        syn_rate = np.zeros(n)
        udp_rate = np.zeros(n)
        reflected = np.zeros(n)
        logins = np.zeros(n)
        rate = 1.0 / self.window_s
        ts = flows["last_ts_ns"].tolist()
        rows = zip(
            flows.src_addr,
            flows.dst_addr,
            dst_port.tolist(),
            ts,
            (syn_only & first).astype(np.float64).tolist(),
            udp_packets.tolist(),
            evasive.tolist(),
            strict=True,
        )
        for i, (src, dst, port, t, syn, pk, ev) in enumerate(rows):
            win = self._to_dst.add(dst, t, (syn, pk))
            syn_rate[i] = win.sums[0] * rate
            udp_rate[i] = win.sums[1] * rate
            if unsolicited[i] or amplified[i]:
                victim = dst if unsolicited[i] else src
                reflected[i] = self._reflected.add(victim, t).count
            if login[i] and first[i]:
                logins[i] = self._logins.add((src, dst, port), t).count
            if ev:
                evasive_sum[i] = self._evasive.add(src, t, (ev,)).sums[0]

        dns = flows["dns_queries"] > 0
        # Entropy comes from one name per flow (the engine keeps only the first), so a
        # tunnel's short handshake name can hide its data names: it halves, never vetoes.
        dns_score = np.minimum(
            ramp(context["dns_qname_mean_len"], c.dns_len_low, c.dns_len_high),
            ramp(context["dns_query_rate"], c.dns_rate_low, c.dns_rate_high),
        ) * np.maximum(
            ramp(context["dns_qname_entropy"], c.dns_entropy_low, c.dns_entropy_high), 0.5
        )
        per_rule = {
            "syn_flood": np.where(syn_only, ramp(syn_rate, c.syn_flood_low, c.syn_flood_high), 0),
            "port_scan": ramp(context["distinct_dst_ports"], c.port_scan_low, c.port_scan_high),
            "host_sweep": ramp(context["distinct_dst_addrs"], c.host_sweep_low, c.host_sweep_high),
            "udp_flood": np.where(
                udp,
                np.maximum(
                    ramp(udp_rate, c.udp_flood_low, c.udp_flood_high),
                    ramp(reflected, c.amplification_low, c.amplification_high),
                ),
                0,
            ),
            "dns_tunnel": np.where(dns, dns_score, 0),
            "brute_force": np.where(login, ramp(logins, c.brute_force_low, c.brute_force_high), 0),
            "tiny_fragments": np.where(
                evasive > 0, ramp(evasive_sum, c.tiny_fragments_low, c.tiny_fragments_high), 0
            ),
        }
        result = FastScores({k: v.astype(np.float64) for k, v in per_rule.items()})
        self.fired.update(r for r in result.rule if r)
        self.scored += int(np.count_nonzero(result.score))
        return result
