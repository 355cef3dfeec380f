"""Overload mode, sniffer side: flood summaries become flood records, losses are reported.

Where the summarising happens, and why there: in the XDP program (xdp/flow_monitor.bpf.c,
step 4b). A forged-source SYN flood makes one new flow per packet; at the flood rates of
bench/flood.py (tens to hundreds of thousands of packets a second) those flows never end
by themselves, so they would fill the flow table (which then evicts), and the records that
reach user space cost ~30 us each in the sniffer (issue 20), so a summary built in Python
would come after the ring buffer and the table had already lost them. Summarising before an
entry is made costs the program a few map updates per new flow and nothing downstream.

This module turns the summaries the program drained (``FlowMonitor.take_floods()``) into
flood records: ordinary flow events (``native.EVENT_DTYPE``) flagged ``MLD_F_FLOOD``, so
they take the same path as every other record (source context, fast rules, the detector's
families, the firewall, the store):

* a destination summary (``MLD_FLOOD_DST``) is a flow from the unspecified address (port
  0: the many sources are not one) to the victim's address and port; its forward direction
  holds the summarised flows' first packets (their count, bytes, SYNs) and its duration the
  span of the summary. The victim is what the firewall can act on.
* a source-prefix summary (``MLD_FLOOD_SRC``) is a flow from the prefix's network address
  to the unspecified address, port 0: how much of the flood one prefix sent.

Gaps between packets are not known inside a summary: each gap is taken as the mean gap of
its span (min = max = mean), so the rate features are right and the spread is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from native.structs import CONSTANTS, EVENT_DTYPE

__all__ = ["LOSS_KEYS", "OverloadReport", "flood_events"]

log = logging.getLogger(__name__)

_DST = CONSTANTS["MLD_FLOOD_DST"]
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


def flood_events(keys: npt.NDArray[np.void], vals: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """Flood records (EVENT_DTYPE, flagged MLD_F_FLOOD) of drained flood summaries."""
    n = len(keys)
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    if n == 0:
        return ev
    dst = keys["kind"] == _DST
    v4 = keys["ip_version"] == 4
    anyaddr = np.where(v4[:, None], _ANY4[None, :], _ANY6[None, :])
    addr = keys["addr"]
    # Destination summary: unspecified -> victim (lo = the unspecified address, initiator).
    # Source summary: prefix -> unspecified (lo = the unspecified address, responder).
    ev["addr_lo"] = anyaddr
    ev["addr_hi"] = addr
    ev["port_lo"] = 0
    ev["port_hi"] = np.where(dst, keys["port"], 0)
    ev["protocol"] = keys["protocol"]
    ev["ip_version"] = keys["ip_version"]
    packets = vals["packets"]
    first, last = vals["first_ts_ns"], vals["last_ts_ns"]
    span = last - first
    gaps = np.maximum(packets, 1) - 1
    mean_gap = np.where(gaps > 0, span // np.maximum(gaps, 1), 0)
    mean_len = vals["bytes"] // np.maximum(packets, 1)
    prefix = "fwd_"  # the initiator's direction: the sources of the summary
    ev[f"{prefix}packets"] = packets
    ev[f"{prefix}bytes"] = vals["bytes"]
    ev[f"{prefix}len_sumsq"] = mean_len * mean_len * packets
    ev[f"{prefix}len_min"] = mean_len
    ev[f"{prefix}len_max"] = mean_len
    ev[f"{prefix}iat_sum_ns"] = span
    ev[f"{prefix}iat_min_ns"] = mean_gap
    ev[f"{prefix}iat_max_ns"] = mean_gap
    ev[f"{prefix}iat_sumsq"] = gaps * (mean_gap >> _IAT_SHIFT) ** 2
    ev[f"{prefix}last_ts_ns"] = last
    ev[f"{prefix}syn"] = vals["syn"]
    ev["first_ts_ns"] = first
    ev["last_ts_ns"] = last
    l4 = np.isin(keys["protocol"], (CONSTANTS["MLD_PROTO_TCP"], CONSTANTS["MLD_PROTO_UDP"]))
    flags = _F_FLOOD | np.where(dst, _F_INITIATOR_LO, 0) | np.where(l4, _F_L4, 0)
    ev["flags"] = flags
    ev["end_reason"] = _END
    return ev


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
