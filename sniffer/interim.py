"""FlowHistory: what earlier records of the same flow already counted.

With interim records (``sniffer.capture.interim_s``) a long flow is exported several
times: interim records every few seconds, cumulative, then its final record, all with one
``flow_id``. The per-source context and the fast rules sum flows and their counters over
sliding windows; counting every record whole would count the flow's connection once per
record and its packets and queries again and again. So each record is split into what is
new in it: :meth:`FlowHistory.previous` gives, per record, whether it is the first record
of its flow and the values of a few counters in the flow's previous record (zeros for a
first record). The windows then add the flow once (at its first record) and only the
growth of its counters later (``current - previous``), so the window's sums are those of
the packets seen within it, as if each record covered only its own stretch of the flow.

Memory: an interim record stores its flow's counters until the next record of the flow;
the final record (``interim`` false) forgets them. At most ``max_flows`` flows are held:
past it the least recently updated is forgotten (``evicted``), and its next record
counts as a new flow (a long flow then counts twice; the cap is the context's
``max_entries``, so it takes as many long flows as the windows hold flows).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from sniffer.records import Array, FlowColumns

__all__ = ["HISTORY_COLUMNS", "FlowHistory", "Previous"]

# The counters whose growth the windows add (see source_context.py and fast_rules.py).
HISTORY_COLUMNS = (
    "fwd_packets",
    "fwd_syn_count",
    "fwd_ack_count",
    "dns_queries",
    "dns_name_chars",
    "tiny_frag_count",
    "overlap_frag_count",
    # brute_force counts the requests, answers and bytes a kept-alive HTTP session or a
    # long FTP/POP3/IMAP connection added since its previous record.
    "fwd_psh_count",
    "bwd_psh_count",
    "fwd_payload_bytes",
    "bwd_payload_bytes",
)


@dataclass(frozen=True)
class Previous:
    """Per record: first record of its flow?, and its flow's previous counters."""

    first: Array  # bool
    values: dict[str, Array]  # HISTORY_COLUMNS and "dns_entropy", float64; 0 when first

    @classmethod
    def none(cls, flows: FlowColumns) -> Previous:
        """Every record the first of its flow (no interim records)."""
        n = len(flows)
        cols = (*HISTORY_COLUMNS, "dns_entropy")
        return cls(np.ones(n, dtype=bool), {c: np.zeros(n) for c in cols})


class FlowHistory:
    """Counters of the flows whose latest record was an interim one."""

    def __init__(self, max_flows: int) -> None:
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, got {max_flows}")
        self.max_flows = max_flows
        self._last: OrderedDict[int, tuple[float, ...]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._last)

    def previous(self, flows: FlowColumns) -> Previous:
        """The :class:`Previous` of ``flows`` (in export order); remembers their counters."""
        n = len(flows)
        width = len(HISTORY_COLUMNS) + 1
        current = np.zeros((n, width))
        for j, name in enumerate(HISTORY_COLUMNS):
            current[:, j] = flows[name]
        current[:, -1] = flows.dns_entropy
        prev = np.zeros((n, width))
        first = np.ones(n, dtype=bool)
        last = self._last
        interim = np.asarray(flows["interim"], dtype=bool) if "interim" in flows.cols else None
        if interim is None or not interim.any():
            if not last:
                return Previous(first, self._columns(prev))
            interim = np.zeros(n, dtype=bool)
        # Only records that are interim, or whose flow is held (from an earlier batch or an
        # interim record before them in this one), read or change the history; the others
        # are first records with nothing to remember, so the loop skips them.
        ids = np.asarray(flows["flow_id"], dtype=np.uint64)
        held = np.fromiter(last.keys(), dtype=np.uint64, count=len(last))
        todo = np.flatnonzero(interim | np.isin(ids, np.concatenate([held, ids[interim]])))
        rows = zip(
            todo.tolist(),
            ids[todo].tolist(),
            interim[todo].tolist(),
            current[todo].tolist(),
            strict=True,
        )
        for i, fid, is_interim, row in rows:
            before = last.pop(fid, None) if not is_interim else last.get(fid)
            if before is not None:
                first[i] = False
                prev[i] = before
            if is_interim:
                last[fid] = tuple(row)
                last.move_to_end(fid)
                if len(last) > self.max_flows:
                    last.popitem(last=False)
                    self.evicted += 1
        return Previous(first, self._columns(prev))

    @staticmethod
    def _columns(prev: np.ndarray) -> dict[str, Array]:
        values = {name: prev[:, j] for j, name in enumerate(HISTORY_COLUMNS)}
        values["dns_entropy"] = prev[:, -1]
        return values
