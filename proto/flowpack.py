"""FlowRecords as one contiguous array: the packed form of ``FlowBatch`` (layout 3).

A FlowBatch carries its records either as ``repeated FlowRecord records`` (one message per
record, built and parsed field by field) or as ``packed_records``: the bytes of a NumPy
structured array of :data:`PACKED_DTYPE`, one fixed-size little-endian row per record,
with the batch's strings (fast rule names, observation points) in ``packed_strings`` and
the row's ``fast_rule``/``observation_point`` holding indexes into it. The sniffer builds
the array from its columns and the detector reads its columns straight from the bytes,
with no Python per record. proto/events.proto (FlowBatch) documents the form; this module
is its only definition, and :func:`to_records` turns rows back into FlowRecords with the
same values (floats are float32, as in the message).

A row's fields are the FlowRecord's, with the message's paths as names ("flow_id",
"fwd.packets", "ctx.flows_per_s"); ``src_addr``/``dst_addr`` hold 16 bytes, of which an
IPv4 record uses the first 4; ``flags`` packs the record's booleans (:data:`FLAG_BITS`).
A new field is a new layout number: a receiver refuses a layout it does not know
(layout 2 added the ``interim`` flag bit; a layout-1 row would read as a final record;
layout 3 added the ``dns.*`` columns of FlowRecord.dns_window and their flag bit).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from proto.events_pb2 import FlowBatch, FlowRecord

__all__ = [
    "ENCODE_OPS",
    "FLAG_BITS",
    "PACKED_DTYPE",
    "PACKED_LAYOUT",
    "FlowKey",
    "PackedFormatError",
    "batch_records",
    "flow_keys",
    "pack_batch",
    "pack_batch_bytes",
    "take_rows",
    "to_records",
    "unpack_batch",
]

PACKED_LAYOUT = 3

_DIRECTION: tuple[tuple[str, str], ...] = (
    ("packets", "<u8"),
    ("bytes", "<u8"),
    ("payload_bytes", "<u8"),
    ("pkt_len_min", "<u4"),
    ("pkt_len_max", "<u4"),
    ("pkt_len_mean", "<f4"),
    ("pkt_len_std", "<f4"),
    ("iat_min_us", "<f4"),
    ("iat_max_us", "<f4"),
    ("iat_mean_us", "<f4"),
    ("iat_std_us", "<f4"),
    ("syn_count", "<u4"),
    ("fin_count", "<u4"),
    ("rst_count", "<u4"),
    ("psh_count", "<u4"),
    ("ack_count", "<u4"),
    ("urg_count", "<u4"),
    ("ece_count", "<u4"),
    ("cwr_count", "<u4"),
    ("init_window", "<u4"),
)
_CONTEXT: tuple[tuple[str, str], ...] = (
    ("window_s", "<f4"),
    ("distinct_dst_addrs", "<u4"),
    ("distinct_dst_ports", "<u4"),
    ("syn_without_ack_ratio", "<f4"),
    ("flows_per_s", "<f4"),
    ("dns_query_rate", "<f4"),
    ("dns_qname_mean_len", "<f4"),
    ("dns_qname_entropy", "<f4"),
)
_DNS: tuple[tuple[str, str], ...] = (
    ("window_s", "<f4"),
    ("queries", "<u4"),
    ("distinct_subdomains", "<u4"),
    ("subdomain_mean_len", "<f4"),
    ("max_label_len", "<u4"),
    ("long_subdomain_entropy", "<f4"),
    ("data_type_share", "<f4"),
    ("query_rate", "<f4"),
)
_SCALARS: tuple[tuple[str, str], ...] = (
    ("flow_id", "<u8"),
    ("first_ts_ns", "<u8"),
    ("last_ts_ns", "<u8"),
    ("src_port", "<u4"),
    ("dst_port", "<u4"),
    ("protocol", "<u4"),
    ("end_reason", "<u4"),
    ("vlan_id", "<u4"),
    ("frag_count", "<u4"),
    ("tiny_frag_count", "<u4"),
    ("overlap_frag_count", "<u4"),
    ("fast_score", "<f4"),
    ("fast_rule", "<u2"),  # index into FlowBatch.packed_strings
    ("observation_point", "<u2"),  # index into FlowBatch.packed_strings
    ("ip_version", "u1"),
    ("flags", "u1"),
)
# flags: FlowRecord's booleans, and whether src_context / dns_window are set at all.
FLAG_BITS = {
    "handshake_verified": 1,
    "src_verified": 2,
    "has_context": 4,
    "interim": 8,
    "has_dns_window": 16,
}

PACKED_DTYPE = np.dtype(
    [
        *_SCALARS,
        ("src_addr", "u1", (16,)),
        ("dst_addr", "u1", (16,)),
        *((f"fwd.{name}", t) for name, t in _DIRECTION),
        *((f"bwd.{name}", t) for name, t in _DIRECTION),
        *((f"ctx.{name}", t) for name, t in _CONTEXT),
        *((f"dns.{name}", t) for name, t in _DNS),
    ]
)

Packed = npt.NDArray[np.void]
_INT32_MAX = 2**31 - 1


# The program of native rows_to_protobuf (native/protowire.c): how a row becomes a
# serialized FlowRecord, op by op (kind, field number, offset in the row, a, b), made from
# PACKED_DTYPE and FlowRecord's descriptor so the layout keeps one definition.
_OP_VARINT, _OP_FLOAT, _OP_FLAG, _OP_ADDR, _OP_STRING, _OP_BEGIN, _OP_END = range(1, 8)
_SUB_PREFIX = {"fwd": "fwd.", "bwd": "bwd.", "src_context": "ctx.", "dns_window": "dns."}
# Sub-messages written only when their flag bit is set.
_SUB_FLAG = {"src_context": "has_context", "dns_window": "has_dns_window"}
_INTEGERS = {
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_ENUM,
}


def _program(desc: Descriptor, prefix: str) -> list[tuple[int, int, int, int, int]]:
    fields: dict[str, Any] = dict(PACKED_DTYPE.fields or {})
    flags = fields["flags"][1]
    ops: list[tuple[int, int, int, int, int]] = []
    for f in sorted(desc.fields, key=lambda f: f.number):
        name = prefix + f.name
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            sub = _SUB_PREFIX[f.name]
            assert f.message_type is not None
            bit = _SUB_FLAG.get(f.name)
            when = (flags, FLAG_BITS[bit]) if bit is not None else (-1, 0)
            ops.append((_OP_BEGIN, f.number, 0, *when))
            ops += _program(f.message_type, sub)
            ops.append((_OP_END, f.number, 0, 0, 0))
        elif f.type == FieldDescriptor.TYPE_BOOL:
            ops.append((_OP_FLAG, f.number, flags, FLAG_BITS[f.name], 0))
        elif name not in fields:
            continue  # tests/sniffer/test_packed_records.py: every field has its column
        elif f.type == FieldDescriptor.TYPE_BYTES:
            ops.append((_OP_ADDR, f.number, fields[name][1], fields["ip_version"][1], 0))
        elif f.type == FieldDescriptor.TYPE_STRING:
            ops.append((_OP_STRING, f.number, fields[name][1], 0, 0))
        elif f.type == FieldDescriptor.TYPE_FLOAT:
            ops.append((_OP_FLOAT, f.number, fields[name][1], 0, 0))
        elif f.type in _INTEGERS:
            col = fields[name][0]
            ops.append((_OP_VARINT, f.number, fields[name][1], col.itemsize, 0))
        else:
            raise TypeError(f"FlowRecord.{name}: no packed encoding for its type")
    return ops


ENCODE_OPS = np.array(_program(FlowRecord.DESCRIPTOR, ""), dtype=np.int32)


class PackedFormatError(ValueError):
    """A batch's packed records do not follow a layout this version knows."""


def pack_batch(header: FlowBatch, rows: Packed, strings: list[str]) -> bytes:
    """``header`` serialized with ``rows`` (PACKED_DTYPE) and their string table."""
    if rows.dtype != PACKED_DTYPE:
        raise TypeError(f"expected rows of PACKED_DTYPE, got {rows.dtype}")
    return pack_batch_bytes(header, np.ascontiguousarray(rows).tobytes(), strings)


def pack_batch_bytes(header: FlowBatch, raw: bytes, strings: list[str]) -> bytes:
    """:func:`pack_batch` of rows given as their bytes (whole PACKED_DTYPE rows: the
    publisher joins the bytes of several arrays without making one array of them)."""
    if len(raw) % PACKED_DTYPE.itemsize:
        raise ValueError(f"{len(raw)} bytes are not whole {PACKED_DTYPE.itemsize}-byte rows")
    header.packed_layout = PACKED_LAYOUT
    header.packed_records = raw
    del header.packed_strings[:]
    header.packed_strings.extend(strings)
    return header.SerializeToString()


def take_rows(rows: Packed, index: npt.NDArray[np.intp]) -> Packed:
    """``rows[index]`` (a new array of the rows at ``index``, in its order), copied a row
    of bytes at a time: NumPy's own fancy indexing of this unaligned many-field dtype
    goes a field at a time, ~4 us a row."""
    if rows.dtype != PACKED_DTYPE:
        raise TypeError(f"expected rows of PACKED_DTYPE, got {rows.dtype}")
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), PACKED_DTYPE.itemsize)
    return np.frombuffer(raw[index].tobytes(), dtype=PACKED_DTYPE)


def unpack_batch(batch: FlowBatch) -> tuple[Packed, list[str]]:
    """The rows (read-only, no copy) and strings of a batch's packed records
    (PackedFormatError when the layout, the size or a string index is wrong)."""
    if batch.packed_layout != PACKED_LAYOUT:
        raise PackedFormatError(
            f"packed records of layout {batch.packed_layout}; this version reads {PACKED_LAYOUT}"
        )
    raw = batch.packed_records
    if len(raw) % PACKED_DTYPE.itemsize:
        raise PackedFormatError(
            f"{len(raw)} bytes of packed records is not a whole number of "
            f"{PACKED_DTYPE.itemsize}-byte rows"
        )
    rows = np.frombuffer(raw, dtype=PACKED_DTYPE)
    strings = list(batch.packed_strings)
    if len(rows):
        # FlowRecord.end_reason is an enum, an int32 on the wire: a row beyond it could
        # not become a record (to_records would raise in the middle of a batch).
        if int(rows["end_reason"].max()) > _INT32_MAX:
            raise PackedFormatError("a packed record's end_reason is beyond an enum's range")
        top = max(int(rows["fast_rule"].max()), int(rows["observation_point"].max()))
        if top >= len(strings):
            raise PackedFormatError(
                f"a packed record names string {top}; the batch has {len(strings)}"
            )
    return rows, strings


def _addr(raw: Any, version: int) -> bytes:
    b = bytes(raw)
    return b[:4] if version == 4 else b


def to_records(rows: Packed, strings: list[str]) -> list[FlowRecord]:
    """One FlowRecord per row, with the values the row holds (for verdicts and events)."""
    out: list[FlowRecord] = []
    if not len(rows):
        return out
    dicts = {name: rows[name].tolist() for name in PACKED_DTYPE.names or ()}
    text = strings or [""]
    for i in range(len(rows)):
        flags = dicts["flags"][i]
        version = dicts["ip_version"][i]
        rec = FlowRecord(
            flow_id=dicts["flow_id"][i],
            ip_version=version,
            src_addr=_addr(dicts["src_addr"][i], version),
            dst_addr=_addr(dicts["dst_addr"][i], version),
            observation_point=text[dicts["observation_point"][i]],
            fast_rule=text[dicts["fast_rule"][i]],
            handshake_verified=bool(flags & FLAG_BITS["handshake_verified"]),
            src_verified=bool(flags & FLAG_BITS["src_verified"]),
            interim=bool(flags & FLAG_BITS["interim"]),
        )
        for name, _ in _SCALARS[:12]:
            if name not in ("flow_id",):
                setattr(rec, name, dicts[name][i])
        for side in ("fwd", "bwd"):
            stats = getattr(rec, side)
            for name, _ in _DIRECTION:
                setattr(stats, name, dicts[f"{side}.{name}"][i])
        if flags & FLAG_BITS["has_context"]:
            ctx = rec.src_context
            for name, _ in _CONTEXT:
                setattr(ctx, name, dicts[f"ctx.{name}"][i])
        if flags & FLAG_BITS["has_dns_window"]:
            dns = rec.dns_window
            for name, _ in _DNS:
                setattr(dns, name, dicts[f"dns.{name}"][i])
        out.append(rec)
    return out


def batch_records(batch: FlowBatch) -> list[FlowRecord]:
    """The batch's records as FlowRecords, whichever form it carries them in
    (PackedFormatError for packed rows this version cannot read)."""
    if batch.packed_layout or batch.packed_records:
        return to_records(*unpack_batch(batch))
    return list(batch.records)


class FlowKey(NamedTuple):
    """What a verdict names of its record (Verdict.flow, src_verified): far cheaper to
    make from rows than a whole FlowRecord when only verdicts are needed."""

    flow_id: int
    ip_version: int
    src_addr: bytes
    dst_addr: bytes
    src_port: int
    dst_port: int
    protocol: int
    first_ts_ns: int
    last_ts_ns: int
    src_verified: bool


def _addresses(raw: npt.NDArray[np.uint8], version: npt.NDArray[np.uint8]) -> list[bytes]:
    full = np.ascontiguousarray(raw).view("S16").ravel()
    four = np.ascontiguousarray(raw[:, :4]).view("S4").ravel()
    # .view("S..") drops trailing zero bytes: pad back to the fixed length.
    return [
        (a.ljust(4, b"\0") if v == 4 else b.ljust(16, b"\0"))
        for a, b, v in zip(four.tolist(), full.tolist(), version.tolist(), strict=True)
    ]


def flow_keys(rows: Packed) -> list[FlowKey]:
    """One FlowKey per row."""
    version = rows["ip_version"]
    verified = ((rows["flags"] & FLAG_BITS["src_verified"]) != 0).tolist()
    return list(
        map(
            FlowKey,
            rows["flow_id"].tolist(),
            version.tolist(),
            _addresses(rows["src_addr"], version),
            _addresses(rows["dst_addr"], version),
            rows["src_port"].tolist(),
            rows["dst_port"].tolist(),
            rows["protocol"].tolist(),
            rows["first_ts_ns"].tolist(),
            rows["last_ts_ns"].tolist(),
            verified,
        )
    )
