"""Overload mode, sniffer side: flood summaries become flood records, losses are reported.

Where the summarising happens, and why there: in the XDP program (xdp/flow_monitor.bpf.c,
step 4b). A forged-source SYN flood makes one new flow per packet, and those flows never end
by themselves: they fill the flow table (which then evicts) and each record that reaches user
space costs the sniffer 24.7 us (``bench/flood.py --sniffer-cost``, 40,524 records/s on the
2-core VM) before the detector's 30-45 us. A summary built here would come after the table
and the ring buffer, and after that cost; in XDP it costs a few map updates per new flow
(sniffer/README.md, "Overload", has the figures).

This module turns the summaries the program drained (``FlowMonitor.take_floods()``) into
flood records: ordinary flow events (``native.EVENT_DTYPE``) flagged ``MLD_F_FLOOD``, so
they take the same path as every other record (source context, fast rules, the detector's
families, the firewall, the store):

* a destination summary (``MLD_FLOOD_DST``) is a flow from the unspecified address (port
  0: the many sources are not one) to the victim's address and port; its forward direction
  holds the summarised flows' first packets (their count, bytes, SYNs) and its duration the
  span of the summary. The victim is what the firewall can act on.
* the victim's reply summary (``MLD_FLOOD_REPLY``: new flows that began with its SYN-ACK,
  RST or ACK, its answers to the forged sources) is the backward direction of the same
  record;
* a source-prefix summary (``MLD_FLOOD_SRC``) is a flow from the prefix's network address
  to the unspecified address, port 0: how much of the flood one prefix sent. Only
  prefixes with ``flood_src_min_flows`` flows in a drain become records: a random-source
  flood puts a few flows in every prefix (counted as ``flood_src_below_min``).

Gaps between packets are not known inside a summary: each gap is taken as the mean gap of
its span (min = max = mean), so the rate features are right and the spread is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from native.structs import CONSTANTS, EVENT_DTYPE
from sniffer.config import FastRulesConfig
from sniffer.fast_rules import FastScores, ramp

__all__ = ["LOSS_KEYS", "OverloadReport", "flood_events", "score_floods"]

log = logging.getLogger(__name__)

_DST = CONSTANTS["MLD_FLOOD_DST"]
_SRC = CONSTANTS["MLD_FLOOD_SRC"]
_REPLY = CONSTANTS["MLD_FLOOD_REPLY"]
_F_FLOOD = CONSTANTS["MLD_F_FLOOD"]
_F_INITIATOR_LO = CONSTANTS["MLD_F_INITIATOR_LO"]
_F_L4 = CONSTANTS["MLD_F_L4"]
_IAT_SHIFT = CONSTANTS["MLD_IAT_SQ_SHIFT"]
_END = CONSTANTS["MLD_END_ACTIVE_TIMEOUT"]  # the summary's span closed, the flood may go on
# IPv4-mapped unspecified address (::ffff:0.0.0.0) and IPv6's (::).
_ANY4 = np.frombuffer(bytes(10) + b"\xff\xff" + bytes(4), dtype=np.uint8)
_ANY6 = np.zeros(16, dtype=np.uint8)

# Counters of the source (xdp.FlowMonitor.stats) that say what was summarised or lost.
LOSS_KEYS = (
    "flows_summarised",
    "flood_records",
    "flood_src_below_min",
    "summary_lost",
    "src_summary_lost",
    "evicted",
    "final_dropped",
    "interim_dropped",
    "lost_uncounted",
    "overload_by_rate",
    "overload_by_ringbuf",
    "overload_by_table",
    "overload_admitted",
)


def flood_events(
    keys: npt.NDArray[np.void], vals: npt.NDArray[np.void], src_min_flows: int = 0
) -> tuple[npt.NDArray[np.void], int]:
    """Flood records (EVENT_DTYPE, flagged MLD_F_FLOOD) of drained flood summaries, and how
    many source-prefix summaries were left out for holding fewer than ``src_min_flows``
    flows (a random-source flood spreads a few flows over every prefix: a record each
    would be a flood of records; their flows are in the victim's record all the same).

    A victim's destination summary (its forward direction: the flows toward it) and its
    reply summary (its backward direction: its answers that began new flows) of one drain
    make one record."""
    acct = keys["kind"] != _SRC
    src_keys, src_vals = keys[~acct], vals[~acct]
    big = src_vals["flows"] >= src_min_flows
    skipped = int((~big).sum())
    src_keys, src_vals = src_keys[big], src_vals[big]
    k, v = keys[acct], vals[acct]
    group = np.zeros(len(k), dtype=[("a", "u1", (16,)), ("p", "<u2"), ("r", "u1"), ("v", "u1")])
    group["a"], group["p"], group["r"], group["v"] = (
        k["addr"],
        k["port"],
        k["protocol"],
        k["ip_version"],
    )
    uniq, inv = np.unique(group, return_inverse=True)
    inv = inv.reshape(-1)
    n_v, n_s = len(uniq), len(src_keys)
    ev = np.zeros(n_v + n_s, dtype=EVENT_DTYPE)
    if len(ev) == 0:
        return ev, skipped
    victims, prefixes = ev[:n_v], ev[n_v:]
    # Victims: unspecified -> victim:port (lo = the unspecified address, the initiator).
    victims["addr_lo"] = _any(uniq["v"])
    victims["addr_hi"] = uniq["a"]
    victims["port_hi"] = uniq["p"]
    victims["protocol"], victims["ip_version"] = uniq["r"], uniq["v"]
    first = np.full(n_v, np.iinfo(np.uint64).max, dtype=np.uint64)
    last = np.zeros(n_v, dtype=np.uint64)
    np.minimum.at(first, inv, v["first_ts_ns"])
    np.maximum.at(last, inv, v["last_ts_ns"])
    victims["first_ts_ns"], victims["last_ts_ns"] = first, last
    for kind, side in ((_DST, "fwd_"), (_REPLY, "bwd_")):
        sel = k["kind"] == kind
        d = np.zeros(n_v, dtype=vals.dtype)
        d["first_ts_ns"] = np.iinfo(np.uint64).max
        for name in ("flows", "packets", "bytes", "syn"):
            np.add.at(d[name], inv[sel], v[name][sel])
        np.minimum.at(d["first_ts_ns"], inv[sel], v["first_ts_ns"][sel])
        np.maximum.at(d["last_ts_ns"], inv[sel], v["last_ts_ns"][sel])
        d["first_ts_ns"][d["packets"] == 0] = 0
        _direction(victims, side, d)
    l4 = np.isin(uniq["r"], (CONSTANTS["MLD_PROTO_TCP"], CONSTANTS["MLD_PROTO_UDP"]))
    victims["flags"] = _F_FLOOD | _F_INITIATOR_LO | np.where(l4, _F_L4, 0)
    # Source prefixes: prefix -> unspecified (lo = the unspecified address, the responder).
    prefixes["addr_lo"] = _any(src_keys["ip_version"])
    prefixes["addr_hi"] = src_keys["addr"]
    prefixes["protocol"], prefixes["ip_version"] = src_keys["protocol"], src_keys["ip_version"]
    prefixes["first_ts_ns"], prefixes["last_ts_ns"] = (
        src_vals["first_ts_ns"],
        src_vals["last_ts_ns"],
    )
    _direction(prefixes, "fwd_", src_vals)
    l4 = np.isin(src_keys["protocol"], (CONSTANTS["MLD_PROTO_TCP"], CONSTANTS["MLD_PROTO_UDP"]))
    prefixes["flags"] = _F_FLOOD | np.where(l4, _F_L4, 0)
    ev["end_reason"] = _END
    return ev, skipped


def _any(ip_version: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The unspecified address of each row's IP version (IPv4-mapped for IPv4)."""
    return np.where((ip_version == 4)[:, None], _ANY4[None, :], _ANY6[None, :])


def _direction(ev: npt.NDArray[np.void], side: str, d: npt.NDArray[np.void]) -> None:
    """One direction of flood records from summary counters (``fwd_`` or ``bwd_``)."""
    packets = d["packets"]
    span = d["last_ts_ns"] - d["first_ts_ns"]
    gaps = np.maximum(packets, 1) - 1
    mean_gap = np.where(gaps > 0, span // np.maximum(gaps, 1), 0)
    mean_len = d["bytes"] // np.maximum(packets, 1)
    ev[f"{side}packets"] = packets
    ev[f"{side}bytes"] = d["bytes"]
    ev[f"{side}len_sumsq"] = mean_len * mean_len * packets
    ev[f"{side}len_min"] = mean_len
    ev[f"{side}len_max"] = mean_len
    ev[f"{side}iat_sum_ns"] = np.where(gaps > 0, span, 0)
    ev[f"{side}iat_min_ns"] = mean_gap
    ev[f"{side}iat_max_ns"] = mean_gap
    ev[f"{side}iat_sumsq"] = gaps * (mean_gap >> _IAT_SHIFT) ** 2
    ev[f"{side}last_ts_ns"] = d["last_ts_ns"]
    ev[f"{side}syn"] = d["syn"]


def score_floods(events: npt.NDArray[np.void], scores: FastScores, rules: FastRulesConfig) -> int:
    """Raise the fast scores of victims' flood records with the rules' own thresholds.

    The fast rules count flows toward a destination in their windows, and a flood record
    is one record for thousands of flows, so their syn_flood and udp_flood rules see one
    flow. Here a victim's record is scored as those rules would score the flows it holds:
    syn_flood on its SYN-only flows a second (``syn_flood_low``..``_high``), udp_flood on
    its UDP packets a second (``udp_flood_low``..``_high``), the rate over the record's
    span or one second, whichever is longer (a lower bound). The record keeps the higher
    of this and the rules' score. Returns how many records were scored above 0."""
    if len(events) == 0:
        return 0
    victim = (events["flags"] & (_F_FLOOD | _F_INITIATOR_LO)) == (_F_FLOOD | _F_INITIATOR_LO)
    if not victim.any():
        return 0
    span_s = np.maximum((events["last_ts_ns"] - events["first_ts_ns"]) / 1e9, 1.0)
    tcp = events["protocol"] == CONSTANTS["MLD_PROTO_TCP"]
    udp = events["protocol"] == CONSTANTS["MLD_PROTO_UDP"]
    syn = np.where(victim & tcp, ramp(events["fwd_syn"] / span_s, rules.syn_flood_low,
                                      rules.syn_flood_high), 0.0)  # fmt: skip
    udp_s = np.where(victim & udp, ramp(events["fwd_packets"] / span_s, rules.udp_flood_low,
                                        rules.udp_flood_high), 0.0)  # fmt: skip
    for name, mine in (("syn_flood", syn), ("udp_flood", udp_s)):
        higher = mine > scores.score
        if name in scores.per_rule:
            scores.per_rule[name] = np.maximum(scores.per_rule[name], mine)
        for i in np.flatnonzero(higher):
            scores.rule[i] = name
        scores.score = np.where(higher, mine, scores.score)
    return int(np.count_nonzero((syn > 0) | (udp_s > 0)))


class OverloadReport:
    """What overload mode summarised and what was lost, once per interval.

    ``update(stats)`` takes the source's counters (``source.`` keys stripped) and returns
    a log line when any of LOSS_KEYS moved since the previous line, else None."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def update(self, stats: Mapping[str, int]) -> str | None:
        now = {k: int(stats[k]) for k in LOSS_KEYS if k in stats}
        if not now:
            return None
        moved = {k: v - self._last.get(k, 0) for k, v in now.items()}
        self._last = now
        if not any(moved.values()):
            return None
        return self.summary(now, moved)

    @staticmethod
    def summary(total: Mapping[str, int], moved: Mapping[str, int] | None = None) -> str:
        d = moved if moved is not None else total

        def g(k: str) -> int:
            return int(d.get(k, 0))

        lost = g("evicted") + g("final_dropped") + g("summary_lost")
        parts = [
            f"summarised {g('flows_summarised')} new flows into {g('flood_records')} flood records",
            f"admitted {g('overload_admitted')} from repeating sources",
            f"lost {lost} counted (evicted {g('evicted')}, ring buffer full "
            f"{g('final_dropped')} final + {g('interim_dropped')} interim, summary map full "
            f"{g('summary_lost')})",
            f"lost uncounted {int(total.get('lost_uncounted', 0))}",
        ]
        starts = g("overload_by_rate") + g("overload_by_ringbuf") + g("overload_by_table")
        if starts:
            parts.append(
                f"overload began {starts}x (rate {g('overload_by_rate')}, ring buffer "
                f"{g('overload_by_ringbuf')}, table {g('overload_by_table')})"
            )
        return "; ".join(parts)
