"""Flow events (``struct mld_flow_event`` as a NumPy array) -> FlowRecord fields and bytes.

Both capture engines hand over arrays of ``native.EVENT_DTYPE``. :func:`flow_columns` turns
one such array into :class:`FlowColumns`, every FlowRecord field as a NumPy column, with
whole-array arithmetic; the context and fast-rule stages read those columns, and
:func:`encode_records` then serializes one FlowRecord per row. Conversions (the units are
those of proto/events.proto):

* **Direction.** The key orders its endpoints ("lo" < "hi"); ``flags & MLD_F_INITIATOR_LO``
  says whether the initiator is lo. src/dst address and port are picked from that flag. The
  per-direction counters are already initiator-first (``fwd_*``) in the event.
* **Addresses.** IPv4 is stored IPv4-mapped (``::ffff:a.b.c.d``); the record carries the 4
  trailing bytes for ip_version 4 and all 16 for 6.
* **ICMP/ICMPv6.** The key's ports are 0; src_port is the ICMP type of the first packet and
  dst_port its code, as Zeek's conn.log does.
* **Packet lengths.** ``pkt_len_mean = bytes / packets``; ``pkt_len_std`` is the population
  standard deviation ``sqrt(len_sumsq / packets - mean^2)``, a variance made slightly
  negative by rounding clamped to 0. Both 0 without packets.
* **Gaps.** ``packets - 1`` gaps per direction. ``iat_mean_us = iat_sum_ns / gaps / 1000``;
  the engine sums squares of ``gap_ns >> 10`` (units of 1.024 us), so
  ``var_us2 = iat_sumsq * 1.024^2 / gaps - mean_us^2`` (clamped at 0; the shift truncates
  each gap by under 1.024 us, which biases the std low by at most about that much).
  min/max are ``iat_min_ns / 1000`` and ``iat_max_ns / 1000``. All four are 0 with fewer
  than two packets.
* **Handshake.** ``handshake_verified`` is the state flag ``MLD_F_HS_VERIFIED`` (the
  initiator acknowledged the responder's ISN, xdp/flow_update.h). ``src_verified`` is not
  the engine's: the sniffer's :class:`~sniffer.source_context.VerifiedSources` sets it.
* **DNS.** The engine keeps, per flow, the wire length of the longest query name, the sum
  of all query names' wire lengths and the first 48 bytes of the longest name. A wire name
  ``3www6google3com0`` (16 bytes) is the dotted ``www.google.com`` (14 characters), so a
  name's length in characters is its wire length minus 2. The longest name is decoded from
  its labels for its Shannon entropy (bits per character of the dotted name, over the at
  most 48 stored bytes).
* **Interim records.** ``interim`` is the record flag ``MLD_F_INTERIM``: the flow goes on
  and this is an update of it (cumulative counters, end reason 0), exported every
  ``sniffer.capture.interim_s``; later records of the flow, the final one last (interim
  false), have the same ``flow_id`` (the id hashes the key and ``first_ts_ns``).
* **Fragments.** ``frag_count``, ``tiny_frag_count`` and ``overlap_frag_count`` are the
  flow state's counters unchanged (packets; see FlowRecord in proto/events.proto). They are
  not model features (the shipped bundle's feature list is fixed); the fast rule
  ``tiny_fragments`` reads them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

import native
from native.structs import CONSTANTS
from proto.events_pb2 import DirectionStats, DnsDomainWindow, FlowRecord, SourceContext
from proto.flowpack import FLAG_BITS, PACKED_DTYPE
from sniffer.batch_windows import ADDRESS_KEY_SIZE, address_keys

__all__ = [
    "CONTEXT_FIELDS",
    "DIRECTION_FIELDS",
    "Array",
    "FlowColumns",
    "PackedFlows",
    "decode_qname",
    "encode_records",
    "flow_columns",
    "pack_records",
    "raw_address_keys",
    "shannon_entropy",
]

# From xdp/flow_types.h, through native.structs.
MLD_F_INITIATOR_LO = CONSTANTS["MLD_F_INITIATOR_LO"]
MLD_F_HS_VERIFIED = CONSTANTS["MLD_F_HS_VERIFIED"]
MLD_F_INTERIM = CONSTANTS["MLD_F_INTERIM"]
PROTO_TCP, PROTO_UDP = CONSTANTS["MLD_PROTO_TCP"], CONSTANTS["MLD_PROTO_UDP"]
PROTO_ICMP, PROTO_ICMPV6 = CONSTANTS["MLD_PROTO_ICMP"], CONSTANTS["MLD_PROTO_ICMPV6"]
# One unit of iat_sumsq's gaps, 1 << MLD_IAT_SQ_SHIFT ns, in us (1.024).
_IAT_UNIT_US = (1 << CONSTANTS["MLD_IAT_SQ_SHIFT"]) / 1000

# DirectionStats fields, in proto order; FlowColumns holds "fwd_<name>" and "bwd_<name>".
DIRECTION_FIELDS = (
    "packets",
    "bytes",
    "payload_bytes",
    "pkt_len_min",
    "pkt_len_max",
    "pkt_len_mean",
    "pkt_len_std",
    "iat_min_us",
    "iat_max_us",
    "iat_mean_us",
    "iat_std_us",
    "syn_count",
    "fin_count",
    "rst_count",
    "psh_count",
    "ack_count",
    "urg_count",
    "ece_count",
    "cwr_count",
    "init_window",
)
# Direction fields copied from the event unchanged: record name -> event name.
_COPIED = {
    "packets": "packets",
    "bytes": "bytes",
    "payload_bytes": "payload_bytes",
    "pkt_len_min": "len_min",
    "pkt_len_max": "len_max",
    "syn_count": "syn",
    "fin_count": "fin",
    "rst_count": "rst",
    "psh_count": "psh",
    "ack_count": "ack",
    "urg_count": "urg",
    "ece_count": "ece",
    "cwr_count": "cwr",
    "init_window": "init_window",
}

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class FlowColumns:
    """FlowRecord fields of n flows as columns (``src_context`` and fast score excluded).

    ``cols`` maps a FlowRecord scalar field name (``flow_id``, ``src_port``, ...) or
    ``fwd_<DirectionStats field>`` / ``bwd_<...>`` to an array of length n. Addresses are
    ``src_addr``/``dst_addr`` lists of 4- or 16-byte ``bytes``. ``dns_queries``,
    ``dns_name_chars`` (summed over the flow's queries) and ``dns_entropy`` (of its first
    name, 0 without queries) feed the source context.
    """

    observation_point: str
    cols: dict[str, Array]
    src_addr: list[bytes]
    dst_addr: list[bytes]
    dns_entropy: npt.NDArray[np.float64]
    # The addresses as n x 16 bytes (IPv4-mapped for version 4), for pack_records.
    src_raw: Array | None = None
    dst_raw: Array | None = None
    # The records' packed rows as far as the events make them (flow_columns(packed=True)):
    # pack_records completes these rows in place instead of building new ones.
    rows: npt.NDArray[np.void] | None = None

    def __len__(self) -> int:
        return len(self.src_addr)

    @cached_property
    def src_keys(self) -> npt.NDArray[np.uint8]:
        """``address_keys(src_addr)``, made once per batch (the source context, the fast
        rules and the JSON lines all key on it), from ``src_raw`` in NumPy when present."""
        return _address_key_rows(self.src_addr, self.src_raw, self.cols.get("ip_version"))

    @cached_property
    def dst_keys(self) -> npt.NDArray[np.uint8]:
        """``address_keys(dst_addr)``, made once per batch (see ``src_keys``)."""
        return _address_key_rows(self.dst_addr, self.dst_raw, self.cols.get("ip_version"))

    def __getitem__(self, name: str) -> Array:
        return self.cols[name]


def _address_key_rows(
    addrs: list[bytes], raw: Array | None, version: Array | None
) -> npt.NDArray[np.uint8]:
    """The (n, 17) rows of ``address_keys(addrs)``: from the n x 16 raw column and the IP
    versions when both are known (``_addresses`` made ``addrs`` from them: the IPv4-mapped
    tail for version 4, all 16 bytes otherwise), else packed from the list. Read-only: the
    rows are shared by every user of the batch."""
    out = address_keys(addrs) if raw is None or version is None else raw_address_keys(raw, version)
    out.flags.writeable = False
    return out


def decode_qname(raw: bytes, wire_len: int) -> str:
    """The dotted name of a DNS name in wire labels, from its first bytes (maybe truncated).

    ``wire_len`` is the full wire length; labels cut off by the truncation are kept as far
    as they were stored. Non-ASCII bytes are decoded as Latin-1, so every byte is one
    character.
    """
    stop = min(len(raw), wire_len)
    labels: list[str] = []
    i = 0
    while i < stop:
        n = raw[i]
        if n == 0 or n > 63:
            break
        labels.append(raw[i + 1 : min(i + 1 + n, stop)].decode("latin-1"))
        i += n + 1
    return ".".join(labels)


def shannon_entropy(text: str) -> float:
    """Shannon entropy of the characters of ``text``, in bits per character (0 if empty)."""
    if not text:
        return 0.0
    total = len(text)
    return -sum(c / total * math.log2(c / total) for c in Counter(text).values())


def _addresses(raw: npt.NDArray[np.uint8], version: npt.NDArray[np.uint8]) -> list[bytes]:
    """16-byte keys -> 4 bytes (the IPv4-mapped tail) for version 4, 16 bytes otherwise."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, 16)
    full = np.array(raw.view("V16").ravel().tolist(), dtype=object)
    tail = np.array(np.ascontiguousarray(raw[:, 12:]).view("V4").ravel().tolist(), dtype=object)
    out: list[bytes] = np.where(version == 4, tail, full).tolist()
    return out


def _direction(
    ev: npt.NDArray[np.void], prefix: str, out: dict[str, Array], copied: bool = True
) -> None:
    """``copied`` false: the caller has put the unchanged columns in ``out`` already."""
    if copied:
        for name, src in _COPIED.items():
            out[prefix + name] = ev[prefix + src]
    packets = ev[prefix + "packets"].astype(np.float64)
    nonzero = np.maximum(packets, 1.0)
    mean = ev[prefix + "bytes"] / nonzero
    var = ev[prefix + "len_sumsq"] / nonzero - mean * mean
    out[prefix + "pkt_len_mean"] = mean
    out[prefix + "pkt_len_std"] = np.sqrt(np.maximum(var, 0.0))
    has_gaps = packets >= 2
    gaps = np.maximum(packets - 1.0, 1.0)
    iat_mean = ev[prefix + "iat_sum_ns"] / gaps / 1000.0
    iat_var = ev[prefix + "iat_sumsq"] * (_IAT_UNIT_US * _IAT_UNIT_US) / gaps - iat_mean**2
    out[prefix + "iat_mean_us"] = np.where(has_gaps, iat_mean, 0.0)
    out[prefix + "iat_std_us"] = np.where(has_gaps, np.sqrt(np.maximum(iat_var, 0.0)), 0.0)
    out[prefix + "iat_min_us"] = np.where(has_gaps, ev[prefix + "iat_min_ns"] / 1000.0, 0.0)
    out[prefix + "iat_max_us"] = np.where(has_gaps, ev[prefix + "iat_max_ns"] / 1000.0, 0.0)


def flow_columns(
    events: npt.NDArray[np.void], observation_point: str, packed: bool = False
) -> FlowColumns:
    """Every FlowRecord field of ``events`` (an array of ``native.EVENT_DTYPE``).

    ``packed``: the record's rows of ``proto.flowpack.PACKED_DTYPE`` are made first, in
    one C pass (``native.events_to_packed``), and kept as ``FlowColumns.rows`` for
    :func:`pack_records`; the columns that differ from the event's (flow id, ports picked
    by direction) are views of those rows and the addresses come from the same pass. The
    columns hold the same values either way (tests/sniffer/test_native_pack.py)."""
    if events.dtype != native.EVENT_DTYPE:
        raise TypeError(f"expected an array of native.EVENT_DTYPE, got {events.dtype}")
    if packed:
        return _packed_columns(events, observation_point)
    ev = events
    lo_is_src = (ev["flags"] & MLD_F_INITIATOR_LO) != 0
    proto = ev["protocol"]
    icmp = (proto == PROTO_ICMP) | (proto == PROTO_ICMPV6)
    version = ev["ip_version"]
    src_raw = np.where(lo_is_src[:, None], ev["addr_lo"], ev["addr_hi"])
    dst_raw = np.where(lo_is_src[:, None], ev["addr_hi"], ev["addr_lo"])
    src_port = np.where(lo_is_src, ev["port_lo"], ev["port_hi"]).astype(np.uint32)
    dst_port = np.where(lo_is_src, ev["port_hi"], ev["port_lo"]).astype(np.uint32)
    cols: dict[str, Array] = {
        "flow_id": native.flow_ids(ev),
        "src_port": np.where(icmp, ev["icmp_type"], src_port),
        "dst_port": np.where(icmp, ev["icmp_code"], dst_port),
        **_event_columns(ev),
    }
    _direction(ev, "fwd_", cols)
    _direction(ev, "bwd_", cols)
    return FlowColumns(
        observation_point=observation_point,
        cols=cols,
        src_addr=_addresses(src_raw, version),
        dst_addr=_addresses(dst_raw, version),
        dns_entropy=_dns_entropy(ev),
        src_raw=src_raw,
        dst_raw=dst_raw,
    )


def _event_columns(ev: npt.NDArray[np.void]) -> dict[str, Array]:
    """The columns taken from the event unchanged or by one whole-array step (both paths)."""
    flags = ev["flags"]
    return {
        "ip_version": ev["ip_version"],
        "protocol": ev["protocol"],
        "first_ts_ns": ev["first_ts_ns"],
        "last_ts_ns": ev["last_ts_ns"],
        "end_reason": ev["end_reason"],
        "vlan_id": ev["vlan_id"],
        "frag_count": ev["frag_count"],
        "tiny_frag_count": ev["tiny_frag_count"],
        "overlap_frag_count": ev["overlap_frag_count"],
        "handshake_verified": (flags & MLD_F_HS_VERIFIED) != 0,
        "interim": (flags & MLD_F_INTERIM) != 0,
        "dns_queries": ev["dns_queries"],
        # Dotted length = wire length - 2 per name (see the module docstring).
        "dns_name_chars": np.maximum(
            ev["dns_qname_len_sum"].astype(np.int64) - 2 * ev["dns_queries"].astype(np.int64),
            0,
        ),
    }


def _dns_entropy(ev: npt.NDArray[np.void]) -> npt.NDArray[np.float64]:
    entropy = np.zeros(len(ev), dtype=np.float64)
    for i in np.flatnonzero(ev["dns_queries"]).tolist():
        name = decode_qname(ev["dns_qname"][i].tobytes(), int(ev["dns_qname_len"][i]))
        entropy[i] = shannon_entropy(name)
    return entropy


def _packed_columns(ev: npt.NDArray[np.void], observation_point: str) -> FlowColumns:
    rows, src, dst = native.events_to_packed(ev)
    cols: dict[str, Array] = {
        "flow_id": rows["flow_id"],
        "src_port": rows["src_port"],
        "dst_port": rows["dst_port"],
        **_event_columns(ev),
    }
    for prefix in ("fwd_", "bwd_"):
        for name, field in _COPIED.items():
            cols[prefix + name] = ev[prefix + field]
        _direction(ev, prefix, cols, copied=False)
    return FlowColumns(
        observation_point=observation_point,
        cols=cols,
        src_addr=src,
        dst_addr=dst,
        dns_entropy=_dns_entropy(ev),
        rows=rows,
    )


CONTEXT_FIELDS = (
    "window_s",
    "distinct_dst_addrs",
    "distinct_dst_ports",
    "syn_without_ack_ratio",
    "flows_per_s",
    "dns_query_rate",
    "dns_qname_mean_len",
    "dns_qname_entropy",
)
_SCALARS = (
    "flow_id",
    "ip_version",
    "src_port",
    "dst_port",
    "protocol",
    "first_ts_ns",
    "last_ts_ns",
    "end_reason",
    "vlan_id",
    "frag_count",
    "tiny_frag_count",
    "overlap_frag_count",
    "handshake_verified",
    "interim",
)


def encode_records(
    flows: FlowColumns,
    context: dict[str, Array] | None = None,
    fast_score: Array | None = None,
    fast_rule: list[str] | None = None,
    src_verified: Array | None = None,
) -> list[bytes]:
    """One serialized FlowRecord per flow.

    ``context`` maps each SourceContext field name to a column (from
    ``SourceContextTracker``); ``fast_score``/``fast_rule`` come from ``FastRules``;
    ``src_verified`` from ``VerifiedSources`` (all false when not given).
    Columns become Python lists first (one C loop each), so the per-record work is
    building the message and serializing it.
    """
    n = len(flows)
    scalars = zip(*(flows[name].tolist() for name in _SCALARS), strict=True)
    fwd = zip(*(flows["fwd_" + name].tolist() for name in DIRECTION_FIELDS), strict=True)
    bwd = zip(*(flows["bwd_" + name].tolist() for name in DIRECTION_FIELDS), strict=True)
    scores = fast_score.tolist() if fast_score is not None else [0.0] * n
    rules = fast_rule if fast_rule is not None else [""] * n
    verified = src_verified.tolist() if src_verified is not None else [False] * n
    if context is not None:
        ctx: Iterable[tuple[object, ...] | None] = zip(
            *(context[name].tolist() for name in CONTEXT_FIELDS), strict=True
        )
    else:
        ctx = [None] * n
    obs = flows.observation_point
    dns = _dns_windows(context, n)
    out: list[bytes] = []
    append = out.append
    names = DIRECTION_FIELDS
    rows = zip(
        scalars, flows.src_addr, flows.dst_addr, fwd, bwd, ctx, scores, rules, verified,
        strict=True,
    )  # fmt: skip
    for sc, src, dst, f, b, c, score, rule, src_ok in rows:
        record = FlowRecord(
            flow_id=sc[0],
            ip_version=sc[1],
            src_addr=src,
            dst_addr=dst,
            src_port=sc[2],
            dst_port=sc[3],
            protocol=sc[4],
            first_ts_ns=sc[5],
            last_ts_ns=sc[6],
            end_reason=sc[7],
            fwd=DirectionStats(**dict(zip(names, f, strict=True))),
            bwd=DirectionStats(**dict(zip(names, b, strict=True))),
            src_context=SourceContext(**dict(zip(CONTEXT_FIELDS, c, strict=True)))
            if c is not None
            else None,
            observation_point=obs,
            vlan_id=sc[8],
            fast_score=score,
            fast_rule=rule,
            frag_count=sc[9],
            tiny_frag_count=sc[10],
            overlap_frag_count=sc[11],
            handshake_verified=sc[12],
            interim=sc[13],
            src_verified=src_ok,
        )
        window = dns[len(out)] if dns is not None else None
        if window is not None:
            record.dns_window.CopyFrom(window)
        append(record.SerializeToString())
    return out


def _dns_windows(context: dict[str, Array] | None, n: int) -> list[DnsDomainWindow | None] | None:
    """FlowRecord.dns_window per record from the ``dns_domain_*`` context columns
    (sniffer/dns_windows.py); None for records without queries, or without the columns."""
    if context is None or "dns_domain_queries" not in context:
        return None
    descs = [f for f in DnsDomainWindow.DESCRIPTOR.fields if f.name != "window_s"]
    fields = [f.name for f in descs]
    cols = [
        (
            context["dns_domain_" + f.name].astype(np.int64)
            if f.type == f.TYPE_UINT32
            else context["dns_domain_" + f.name]
        ).tolist()
        for f in descs
    ]
    window = float(context["dns_domain_window_s"][0]) if n else 0.0
    out: list[DnsDomainWindow | None] = []
    for i, queries in enumerate(context["dns_domain_queries"].tolist()):
        if queries <= 0:
            out.append(None)
            continue
        values = {f: col[i] for f, col in zip(fields, cols, strict=True)}
        out.append(DnsDomainWindow(window_s=window, **values))
    return out


@dataclass(frozen=True)
class PackedFlows:
    """Records as rows of ``proto.flowpack.PACKED_DTYPE`` and the strings they index."""

    rows: npt.NDArray[np.void]
    strings: list[str]

    def __len__(self) -> int:
        return len(self.rows)


def _packed_addresses(raw: Array | None, version: Array, n: int) -> Array:
    """n x 16 bytes as the packed form holds them: IPv4's 4 bytes first, then zeros."""
    if raw is None:
        raise ValueError("pack_records needs FlowColumns made by flow_columns (src_raw)")
    raw = np.asarray(raw, dtype=np.uint8).reshape(n, 16)
    out = raw.copy()
    v4 = np.asarray(version) == 4
    out[v4, :4] = raw[v4, 12:]
    out[v4, 4:] = 0
    return out


def pack_records(
    flows: FlowColumns,
    context: dict[str, Array] | None = None,
    fast_score: Array | None = None,
    fast_rule: list[str] | None = None,
    src_verified: Array | None = None,
) -> PackedFlows:
    """What :func:`encode_records` serializes, as packed rows (proto/flowpack.py): the
    same values, a column at a time, no message per record.

    With ``flows.rows`` (``flow_columns(packed=True)``) those rows are completed in place
    (context, DNS window, fast score and rule, flags) and returned: the key, scalars and
    directions are in them already."""
    n = len(flows)
    made = flows.rows
    rows = made if made is not None else np.zeros(n, dtype=PACKED_DTYPE)
    if n == 0:
        return PackedFlows(rows, [])
    if made is None:
        for name in _SCALARS:
            if name not in FLAG_BITS:  # the booleans go to the flags byte
                rows[name] = flows[name]
    flags = np.where(np.asarray(flows["handshake_verified"], dtype=bool),
                     FLAG_BITS["handshake_verified"], 0)  # fmt: skip
    flags |= np.where(np.asarray(flows["interim"], dtype=bool), FLAG_BITS["interim"], 0)
    if src_verified is not None:
        flags |= np.where(np.asarray(src_verified, dtype=bool), FLAG_BITS["src_verified"], 0)
    if context is not None:
        flags |= FLAG_BITS["has_context"]
        for name in CONTEXT_FIELDS:
            rows["ctx." + name] = context[name]
    if context is not None and "dns_domain_queries" in context:
        # FlowRecord.dns_window of the records whose flow sent queries (sniffer/dns_windows.py).
        asked = np.asarray(context["dns_domain_queries"]) > 0
        flags |= np.where(asked, FLAG_BITS["has_dns_window"], 0)
        for name in PACKED_DTYPE.names or ():
            if name.startswith("dns."):
                rows[name] = np.where(asked, context["dns_domain_" + name[4:]], 0)
    rows["flags"] = flags
    if made is None:
        for side in ("fwd", "bwd"):
            for name in DIRECTION_FIELDS:
                rows[f"{side}.{name}"] = flows[f"{side}_{name}"]
        rows["src_addr"] = _packed_addresses(flows.src_raw, flows["ip_version"], n)
        rows["dst_addr"] = _packed_addresses(flows.dst_raw, flows["ip_version"], n)
    strings = [flows.observation_point]
    if fast_score is not None:
        rows["fast_score"] = fast_score
    if fast_rule is not None:
        # The batch's rule names, sorted, and each record's index among them: a dict
        # look-up per record (np.unique sorted the n names as strings, 15x the time).
        names = sorted({str(rule) for rule in set(fast_rule)})
        at = {name: i + 1 for i, name in enumerate(names)}
        rows["fast_rule"] = np.fromiter(map(at.__getitem__, fast_rule), dtype=np.int64,
                                        count=n)  # fmt: skip
        strings += names
    else:
        strings.append("")
        rows["fast_rule"] = 1
    return PackedFlows(rows, strings)


def raw_address_keys(raw: npt.ArrayLike, version: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """The rows :func:`sniffer.batch_windows.address_keys` makes, from the n x 16-byte
    address column of :class:`sniffer.records.FlowColumns` (``src_raw``: IPv4-mapped for
    version 4) and the IP versions, in NumPy: the length (4 or 16), then the address's
    bytes zero-padded to 16."""
    raw16 = np.asarray(raw, dtype=np.uint8).reshape(-1, 16)
    v4 = np.asarray(version) == 4
    out = np.zeros((len(raw16), ADDRESS_KEY_SIZE), dtype=np.uint8)
    out[:, 0] = np.where(v4, 4, 16)
    out[~v4, 1:] = raw16[~v4]
    out[v4, 1:5] = raw16[v4, 12:]
    return out
