"""SourceContext: how each record's source (initiator) address behaved over a recent window.

For every record, in export order, the tracker adds the flow to its source's sliding window
(see ``sliding_window.py``: time is the records' ``last_ts_ns``, memory is capped) and
reads the window back, so a record's context covers the flows of its source exported up
to and including itself within ``window_s`` before its ``last_ts_ns``. The fields
(proto/events.proto, SourceContext):

* ``distinct_dst_addrs`` / ``distinct_dst_ports``: distinct responder addresses / ports
  (ICMP type/code are not ports and are left out of the port count);
* ``syn_without_ack_ratio``: the source's TCP flows that sent a SYN and never an ACK
  (``fwd_syn > 0 and fwd_ack == 0``) over its TCP flows; 0 without TCP flows;
* ``flows_per_s``: flows in the window / ``window_s``;
* ``dns_query_rate``: DNS queries the source sent / ``window_s``;
* ``dns_qname_mean_len``: characters of the dotted names (wire length - 2 each, see
  ``records.py``) over the number of queries;
* ``dns_qname_entropy``: mean over the window's DNS flows of their longest name's entropy
  (the engine keeps one name per flow), in bits per character.

Interim records (``FlowRecord.interim``): a long flow comes as several cumulative records
with one ``flow_id``. Given the :class:`~sniffer.interim.Previous` of the records
(``sniffer/interim.py``), a flow counts as a flow (``flows_per_s``, its TCP and DNS-flow
indicators) at its first record only, and later records add only what grew since the
flow's previous record: new queries and name characters, the change of its SYN-without-ACK
and DNS-flow indicators and of its name entropy. Each record still adds its destination
and port to the distinct counts (the same values again change nothing). So the window
counts each connection once and the queries sent within it, not the flow's whole history
again at every record. Without ``previous`` every record is a flow of its own (as before
interim records existed).

:class:`VerifiedSources` is the other per-source memory: which initiator addresses
completed a verified TCP handshake (FlowRecord.handshake_verified, xdp/flow_update.h)
within ``verified_ttl_s`` before a record, which sets the record's ``src_verified``. A
sender with a forged address never completes one, so the firewall blocks only verified
sources by default (firewall.block_unverified).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from base.errors import ConfigError
from sniffer.batch_windows import BatchWindows, int_values
from sniffer.config import ContextConfig
from sniffer.interim import Previous
from sniffer.records import CONTEXT_FIELDS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Array, FlowColumns
from sniffer.sliding_window import SlidingWindows

__all__ = ["CONTEXT_FIELDS", "SourceContextTracker", "VerifiedSources"]

# Window sums, by index.
_TCP, _SYN_NO_ACK, _DNS_QUERIES, _DNS_CHARS, _DNS_FLOWS, _DNS_ENTROPY, _FLOWS = range(7)
_ADDR, _PORT = 0, 1


class SourceContextTracker:
    """Per-source sliding windows; :meth:`update` gives the SourceContext of each record.

    ``native`` (the default): the windows are native and take a batch at a time
    (``batch_windows.py``); false runs the per-record Python definition
    (``sliding_window.py``). Both give the same columns (tests/sniffer/test_batch_context.py).
    """

    def __init__(self, config: ContextConfig, *, native: bool = True) -> None:
        self.window_s = config.window_s
        caps: dict[str, Any] = {
            "window_s": config.window_s,
            "n_sums": 7,
            "n_distinct": 2,
            "max_keys": config.max_keys,
            "max_entries_per_key": config.max_entries_per_key,
            "max_entries": config.max_entries,
        }
        self.windows: SlidingWindows | BatchWindows = (
            BatchWindows(**caps) if native else SlidingWindows(**caps)
        )

    def update(self, flows: FlowColumns, previous: Previous | None = None) -> dict[str, Array]:
        """Add ``flows`` in order; return their SourceContext fields as columns.

        ``previous``: what earlier records of the same flows counted (interim records,
        see the module docstring); None counts every record as a flow of its own."""
        n = len(flows)
        prev = previous if previous is not None else Previous.none(flows)
        pv = prev.values
        first = prev.first.astype(np.float64)
        proto = flows["protocol"]
        is_tcp = proto == PROTO_TCP
        syn_no_ack = is_tcp & (flows["fwd_syn_count"] > 0) & (flows["fwd_ack_count"] == 0)
        was_syn_no_ack = (
            is_tcp & ~prev.first & (pv["fwd_syn_count"] > 0) & (pv["fwd_ack_count"] == 0)
        )
        has_port = (proto != PROTO_ICMP) & (proto != PROTO_ICMPV6)
        queries = flows["dns_queries"].astype(np.float64)
        sums = np.column_stack(
            [
                is_tcp * first,
                syn_no_ack.astype(np.float64) - was_syn_no_ack,
                queries - pv["dns_queries"],
                flows["dns_name_chars"].astype(np.float64) - pv["dns_name_chars"],
                (queries > 0).astype(np.float64) - (pv["dns_queries"] > 0),
                flows.dns_entropy - pv["dns_entropy"],
                first,
            ]
        ).reshape(n, 7)
        if isinstance(self.windows, BatchWindows):
            values = np.stack(
                [flows.dst_keys, int_values(flows["dst_port"].astype(np.int64))],
                axis=1,
            )
            counted = np.column_stack([np.ones(n, dtype=bool), has_port]).reshape(n, 2)
            state = self.windows.add(flows.src_keys, flows["last_ts_ns"], sums, values, counted)
            s = state.sums
            d_addr = state.distinct[:, _ADDR].astype(np.float64)
            d_port = state.distinct[:, _PORT].astype(np.float64)
        else:
            s, d_addr, d_port = self._add_per_record(self.windows, flows, sums, has_port)
        return self._columns(n, s, d_addr, d_port)

    @staticmethod
    def _add_per_record(
        windows: SlidingWindows, flows: FlowColumns, sums: Array, has_port: Array
    ) -> tuple[Array, Array, Array]:
        """The window sums and distinct counts after each record, one record at a time."""
        n = len(flows)
        s = np.zeros((n, sums.shape[1]))
        d_addr = np.zeros(n)
        d_port = np.zeros(n)
        ports = np.where(has_port, flows["dst_port"].astype(np.int64), -1).tolist()
        rows = zip(
            flows.src_addr,
            flows.dst_addr,
            ports,
            flows["last_ts_ns"].tolist(),
            sums.tolist(),
            strict=True,
        )
        for i, (src, dst, port, ts, row_sums) in enumerate(rows):
            win = windows.add(src, ts, tuple(row_sums), (dst, port))
            s[i] = win.sums
            d_addr[i] = win.distinct_count(_ADDR)
            d_port[i] = win.distinct_count(_PORT) - (1 if -1 in win.distinct[_PORT] else 0)
        return s, d_addr, d_port

    def _columns(self, n: int, s: Array, d_addr: Array, d_port: Array) -> dict[str, Array]:
        rate = 1.0 / self.window_s

        def ratio(num: int, den: int) -> Array:
            # With interim records a window can hold the growth of a flow whose first
            # record has left it: ratios are kept within their ranges.
            q = np.divide(s[:, num], s[:, den], out=np.zeros(n), where=s[:, den] >= 1)
            return np.maximum(q, 0.0)

        out = np.zeros((n, len(CONTEXT_FIELDS)), dtype=np.float64)
        out[:, 0] = self.window_s
        out[:, 1] = d_addr
        out[:, 2] = d_port
        out[:, 3] = np.minimum(ratio(_SYN_NO_ACK, _TCP), 1.0)
        out[:, 4] = np.maximum(s[:, _FLOWS], 0.0) * rate
        out[:, 5] = np.maximum(s[:, _DNS_QUERIES], 0.0) * rate
        out[:, 6] = ratio(_DNS_CHARS, _DNS_QUERIES)
        out[:, 7] = ratio(_DNS_ENTROPY, _DNS_FLOWS)
        cols: dict[str, Array] = {name: out[:, j] for j, name in enumerate(CONTEXT_FIELDS)}
        cols["distinct_dst_addrs"] = out[:, 1].astype(np.uint32)
        cols["distinct_dst_ports"] = out[:, 2].astype(np.uint32)
        return cols


class VerifiedSources:
    """Initiator addresses that completed a verified handshake, for ``verified_ttl_s``.

    :meth:`update` goes through records in export order: a record whose flow verified its
    handshake (re)stamps its source with the record's ``last_ts_ns``; a record's
    ``src_verified`` is true when its source was stamped at most ``verified_ttl_s`` before
    the record's ``last_ts_ns`` (the record itself included). Time is the records' own, so
    a capture read offline gives what the same traffic gave live. At most
    ``verified_max_sources`` addresses are kept: past it the least recently verified is
    forgotten (counted in ``evicted``); forgetting only costs a real source its
    verification until its next handshake, never lets a forged one in. Memory: about 120
    bytes per address (a 4- or 16-byte ``bytes`` key, an int and the ordered dict's
    links): 7.9 MB for 65,536 IPv4 sources (the default bound), measured with tracemalloc.
    """

    def __init__(self, config: ContextConfig) -> None:
        if not config.verified_ttl_s > 0 or config.verified_max_sources < 1:
            raise ConfigError(
                f"sniffer.context.verified_ttl_s ({config.verified_ttl_s}) must be above 0 and "
                f"verified_max_sources ({config.verified_max_sources}) at least 1: fix mld.yaml"
            )
        self.ttl_ns = int(config.verified_ttl_s * 1e9)
        self.max_sources = config.verified_max_sources
        self._stamps: OrderedDict[bytes, int] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._stamps)

    def update(self, flows: FlowColumns) -> Array:
        """``src_verified`` of each record of ``flows``, stamping the verified ones first."""
        out = np.zeros(len(flows), dtype=bool)
        stamps = self._stamps
        hs = np.asarray(flows["handshake_verified"], dtype=bool)
        srcs = flows.src_addr
        # Only a record that verifies, or whose source is stamped, reads or changes a stamp:
        # the others (a flood of forged sources: nearly all) are skipped by set operations
        # in C, not a Python step each. Their order is kept (a handshake stamps its source
        # for the records after it).
        relevant = stamps.keys() & set(srcs) if stamps else set()
        relevant.update(srcs[i] for i in np.flatnonzero(hs).tolist())
        if not relevant:
            return out
        ts_col = flows["last_ts_ns"]
        picked = [i for i, src in enumerate(srcs) if src in relevant]
        rows = zip(
            picked,
            [srcs[i] for i in picked],
            hs[picked].tolist(),
            ts_col[picked].tolist(),
            strict=True,
        )
        for i, src, verified, ts in rows:
            if verified:
                stamps[src] = max(ts, stamps.get(src, ts))
                stamps.move_to_end(src)
                if len(stamps) > self.max_sources:
                    stamps.popitem(last=False)
                    self.evicted += 1
                out[i] = True
                continue
            stamp = stamps.get(src)
            if stamp is None:
                continue
            if ts - stamp <= self.ttl_ns:
                out[i] = True
            else:
                del stamps[src]  # lapsed: a new handshake must verify it again
        return out
