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
        # are first records with nothing to remember, so they are skipped.
        ids = np.asarray(flows["flow_id"], dtype=np.uint64)
        held = np.fromiter(last.keys(), dtype=np.uint64, count=len(last))
        todo = np.flatnonzero(interim | np.isin(ids, np.concatenate([held, ids[interim]])))
        if len(last) + int(np.count_nonzero(interim)) <= self.max_flows:
            self._grouped(todo, ids[todo], interim[todo], current[todo], first, prev)
        else:
            self._in_order(todo, ids, interim, current, first, prev)
        return Previous(first, self._columns(prev))

    def _in_order(
        self,
        todo: np.ndarray,
        ids: np.ndarray,
        interim: np.ndarray,
        current: np.ndarray,
        first: np.ndarray,
        prev: np.ndarray,
    ) -> None:
        """The definition, record by record in export order (and what runs when the cap
        may evict in this batch): a final record takes and forgets its flow's counters, an
        interim one reads them and leaves its own, most recently used last."""
        last = self._last
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

    def _grouped(
        self,
        todo: np.ndarray,
        ids: np.ndarray,
        interim: np.ndarray,
        current: np.ndarray,
        first: np.ndarray,
        prev: np.ndarray,
    ) -> None:
        """What :meth:`_in_order` gives when nothing can be evicted (the held flows plus
        this batch's interim records fit the cap), by flow instead of by record. A record
        reads what the record before it of the same flow left (its counters if that one
        was interim, nothing if it was final), or for the flow's first record here, what
        the history held. Afterwards a flow whose last record here was final is gone, and
        one whose last record was interim holds that record's counters and moves to the
        end, in the order of those last records (as their move_to_end calls would)."""
        last = self._last
        m = len(todo)
        if m == 0:
            return
        order = np.argsort(ids, kind="stable")  # by flow, export order within a flow
        sid = ids[order]
        starts = np.ones(m, dtype=bool)
        starts[1:] = sid[1:] != sid[:-1]
        # Records after the first of their flow here: the one before them is order[k - 1].
        later = np.flatnonzero(~starts)
        before = order[later - 1]
        took = interim[before]
        first[todo[order[later[took]]]] = False
        prev[todo[order[later[took]]]] = current[before[took]]
        # The first record of each flow here reads the history.
        heads = order[starts]
        if last:
            head_ids = ids[heads].tolist()
            found = [k for k, fid in enumerate(head_ids) if fid in last]
            if found:
                at = todo[heads[found]]
                first[at] = False
                prev[at] = np.array([last[head_ids[k]] for k in found], dtype=np.float64)
                for k in found:
                    del last[head_ids[k]]
        # The flows whose last record here is interim keep it, in the order of those records.
        ends = np.empty(m, dtype=bool)
        ends[:-1] = starts[1:]
        ends[-1] = True
        tails = order[ends]
        kept = np.sort(tails[interim[tails]])
        last.update(zip(ids[kept].tolist(), map(tuple, current[kept].tolist()), strict=True))

    @staticmethod
    def _columns(prev: np.ndarray) -> dict[str, Array]:
        values = {name: prev[:, j] for j, name in enumerate(HISTORY_COLUMNS)}
        values["dns_entropy"] = prev[:, -1]
        return values
