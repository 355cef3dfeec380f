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

Reflection (amplification): a UDP flow whose *initiator* port is a reflection service port
(DNS 53, NTP 123, SSDP 1900, memcached 11211, ...) is a response nobody on this side asked
for (the victim's address was spoofed in the requests); one whose responder port is such a
port and whose responder sent at least ``amplification_ratio`` times the requester's bytes
is an amplified answer, and its victim is the initiator. Either counts as one reflected
flow toward its victim.

The destination-keyed windows live here (SourceContext only has the source's view) and
use the same record-time windows and caps as the source context.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt

from sniffer.batch_windows import ADDRESS_KEY_SIZE, BatchWindows, address_keys, int_values
from sniffer.config import ContextConfig, FastRulesConfig
from sniffer.records import PROTO_TCP, PROTO_UDP, Array, FlowColumns
from sniffer.sliding_window import SlidingWindows

__all__ = ["RULES", "FastRules", "FastScores", "ramp"]

RULES = ("syn_flood", "port_scan", "host_sweep", "udp_flood", "dns_tunnel", "brute_force")

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

    def __init__(
        self, rules: FastRulesConfig, context: ContextConfig, *, native: bool = True
    ) -> None:
        """``native``: the windows are native and fed a batch at a time
        (sniffer/batch_windows.py); false runs the per-record Python definition."""
        self.config = rules
        self.window_s = context.window_s
        self.native = native

        def windows(n_sums: int, key_size: int = ADDRESS_KEY_SIZE) -> Any:
            caps: dict[str, Any] = {
                "window_s": context.window_s,
                "n_sums": n_sums,
                "n_distinct": 0,
                "max_keys": context.max_keys,
                "max_entries_per_key": context.max_entries_per_key,
                "max_entries": context.max_entries,
            }
            if native:
                return BatchWindows(**caps, key_size=key_size, value_size=1)
            return SlidingWindows(**caps)

        # Per destination address: SYN-only flows, UDP packets toward it.
        self._to_dst = windows(2)
        # Per victim address: reflected flows.
        self._reflected = windows(0)
        # Per (source, destination, port): short flows to a login service.
        self._logins = windows(0, 2 * ADDRESS_KEY_SIZE + 8)
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

    def score(self, flows: FlowColumns, context: dict[str, Array]) -> FastScores:
        """Scores of ``flows`` (in export order) given their SourceContext columns."""
        c = self.config
        proto = flows["protocol"]
        src_port = flows["src_port"].astype(np.int64)
        dst_port = flows["dst_port"].astype(np.int64)
        fwd_bytes = flows["fwd_bytes"].astype(np.float64)
        bwd_bytes = flows["bwd_bytes"].astype(np.float64)
        tcp = proto == PROTO_TCP
        udp = proto == PROTO_UDP
        syn_only = tcp & (flows["fwd_syn_count"] > 0) & (flows["fwd_ack_count"] == 0)
        udp_packets = np.where(udp, flows["fwd_packets"], 0).astype(np.float64)
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

        if self.native:
            syn_rate, udp_rate, reflected, logins = self._windows_batch(
                flows, dst_port, syn_only, udp_packets, unsolicited, amplified, login
            )
        else:
            syn_rate, udp_rate, reflected, logins = self._windows_per_record(
                flows, dst_port, syn_only, udp_packets, unsolicited, amplified, login
            )

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
        }
        result = FastScores({k: v.astype(np.float64) for k, v in per_rule.items()})
        fired = Counter(result.rule)
        fired.pop("", None)
        self.fired.update(fired)
        self.scored += int(np.count_nonzero(result.score))
        return result

    def _windows_per_record(
        self,
        flows: FlowColumns,
        dst_port: npt.NDArray[np.int64],
        syn_only: npt.NDArray[np.bool_],
        udp_packets: Floats,
        unsolicited: npt.NDArray[np.bool_],
        amplified: npt.NDArray[np.bool_],
        login: npt.NDArray[np.bool_],
    ) -> tuple[Floats, Floats, Floats, Floats]:
        """The destination windows' values per record, one record at a time (the
        definition; :meth:`_windows_batch` gives the same numbers)."""
        n = len(flows)
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
            syn_only.astype(np.float64).tolist(),
            udp_packets.tolist(),
            strict=True,
        )
        for i, (src, dst, port, t, syn, pk) in enumerate(rows):
            win = self._to_dst.add(dst, t, (syn, pk))
            syn_rate[i] = win.sums[0] * rate
            udp_rate[i] = win.sums[1] * rate
            if unsolicited[i] or amplified[i]:
                victim = dst if unsolicited[i] else src
                reflected[i] = self._reflected.add(victim, t).count
            if login[i]:
                logins[i] = self._logins.add((src, dst, port), t).count

        return syn_rate, udp_rate, reflected, logins

    def _windows_batch(
        self,
        flows: FlowColumns,
        dst_port: npt.NDArray[np.int64],
        syn_only: npt.NDArray[np.bool_],
        udp_packets: Floats,
        unsolicited: npt.NDArray[np.bool_],
        amplified: npt.NDArray[np.bool_],
        login: npt.NDArray[np.bool_],
    ) -> tuple[Floats, Floats, Floats, Floats]:
        """:meth:`_windows_per_record` over the whole batch in native windows (each window
        set is independent of the others, so each takes the batch in one call)."""
        rate = 1.0 / self.window_s
        ts = flows["last_ts_ns"]
        src, dst = address_keys(flows.src_addr), address_keys(flows.dst_addr)
        to_dst = self._to_dst.add(
            dst, ts, np.column_stack([syn_only.astype(np.float64), udp_packets])
        )
        syn_rate = to_dst.sums[:, 0] * rate
        udp_rate = to_dst.sums[:, 1] * rate
        reflecting = unsolicited | amplified
        victim = np.where(unsolicited[:, None], dst, src)
        reflected = self._reflected.add(victim, ts, select=reflecting).count.astype(np.float64)
        login_keys = np.concatenate([src, dst, int_values(dst_port, 8)], axis=1)
        logins = self._logins.add(login_keys, ts, select=login).count.astype(np.float64)
        return syn_rate, udp_rate, reflected, logins
