"""The feature vector: one definition, used for training, offline analysis and live scoring.

Every feature is computed from a FlowRecord (proto/events.proto), so from packets only: no
host metrics, nothing a network sensor cannot see. Names follow the record's field paths::

    protocol, dst_port, end_reason          the record's scalars
    src_port_lt1024                         src_port below 1024, else 1024: a reflection
                                            service's port counts, an ephemeral one does not
    duration_s                              (last_ts_ns - first_ts_ns) / 1e9
    fwd.<f>, bwd.<f>                        the 20 DirectionStats fields of each direction
    ctx.<f>                                 SourceContext, window_s left out (a constant)
    bytes_ratio                             bwd.bytes / (fwd.bytes + 1)
    packets_per_s                           (fwd + bwd packets) / max(duration_s, 1 ms)

The same rows come out of two paths: :func:`columns_from_flows` (the sniffer's NumPy
columns, offline and in training) and :func:`columns_from_records` (decoded FlowRecords,
in the scoring service). The record stores some fields as float32, so the column path
rounds those through float32 first; a test checks that both paths give identical
matrices. :data:`SCHEMA_HASH` fingerprints the list; a model bundle whose feature list
differs is refused at load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from native import _flowengine
from proto.events_pb2 import FlowRecord
from proto.flowpack import PACKED_DTYPE
from sniffer.records import CONTEXT_FIELDS, DIRECTION_FIELDS, Array, FlowColumns

__all__ = [
    "FEATURES",
    "SCHEMA_HASH",
    "columns_from_flows",
    "columns_from_packed",
    "columns_from_records",
    "feature_matrix",
    "packed_feature_matrix",
    "scorer_inputs",
]

# DirectionStats and SourceContext fields that the record carries as float32.
_F32_DIRECTION = {
    "pkt_len_mean",
    "pkt_len_std",
    "iat_min_us",
    "iat_max_us",
    "iat_mean_us",
    "iat_std_us",
}
_F32_CONTEXT = {
    "syn_without_ack_ratio",
    "flows_per_s",
    "dns_query_rate",
    "dns_qname_mean_len",
    "dns_qname_entropy",
}
_CONTEXT = tuple(f for f in CONTEXT_FIELDS if f != "window_s")
FEATURES: tuple[str, ...] = (
    "protocol",
    "dst_port",
    "src_port_lt1024",
    "end_reason",
    "duration_s",
    *(f"fwd.{f}" for f in DIRECTION_FIELDS),
    *(f"bwd.{f}" for f in DIRECTION_FIELDS),
    *(f"ctx.{f}" for f in _CONTEXT),
    "bytes_ratio",
    "packets_per_s",
)
SCHEMA_HASH = hashlib.sha256("\n".join(FEATURES).encode()).hexdigest()[:16]

Columns = dict[str, npt.NDArray[np.float64]]


def _f32(a: Array) -> npt.NDArray[np.float64]:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def columns_from_flows(flows: FlowColumns, context: Mapping[str, Array]) -> Columns:
    """The base columns of the features, from the sniffer's columns and SourceContext."""
    cols: Columns = {}
    for name in ("protocol", "dst_port", "src_port", "end_reason"):
        cols[name] = np.asarray(flows[name], dtype=np.float64)
    # uint64 nanoseconds: kept exact as int64 differences below.
    cols["first_ts_ns"] = flows["first_ts_ns"]
    cols["last_ts_ns"] = flows["last_ts_ns"]
    for side in ("fwd", "bwd"):
        for f in DIRECTION_FIELDS:
            col = flows[f"{side}_{f}"]
            cols[f"{side}.{f}"] = _f32(col) if f in _F32_DIRECTION else col.astype(np.float64)
    for f in _CONTEXT:
        col = np.asarray(context[f])
        cols[f"ctx.{f}"] = _f32(col) if f in _F32_CONTEXT else col.astype(np.float64)
    return cols


def columns_from_records(records: Sequence[FlowRecord]) -> Columns:
    """The base columns of the features, from decoded FlowRecords.

    One pass per field with ``attrgetter`` over the records (or their sub-messages): about
    5 us per record, half of a per-record loop over every field.
    """
    cols: Columns = {}
    for name in ("protocol", "dst_port", "src_port", "end_reason"):
        get = attrgetter(name)
        cols[name] = np.array([get(r) for r in records], dtype=np.float64)
    for name in ("first_ts_ns", "last_ts_ns"):
        get = attrgetter(name)
        cols[name] = np.array([get(r) for r in records], dtype=np.uint64)
    for side in ("fwd", "bwd"):
        stats = [getattr(r, side) for r in records]
        for f in DIRECTION_FIELDS:
            get = attrgetter(f)
            cols[f"{side}.{f}"] = np.array([get(s) for s in stats], dtype=np.float64)
    contexts = [r.src_context for r in records]
    for f in _CONTEXT:
        get = attrgetter(f)
        cols[f"ctx.{f}"] = np.array([get(c) for c in contexts], dtype=np.float64)
    return cols


def columns_from_packed(rows: npt.NDArray[np.void]) -> Columns:
    """The base columns of the features, from packed records (proto/flowpack.py): the
    rows hold the record's values under the feature paths, float32 where it is float."""
    cols: Columns = {}
    for name in ("protocol", "dst_port", "src_port", "end_reason"):
        cols[name] = rows[name].astype(np.float64)
    for name in ("first_ts_ns", "last_ts_ns"):
        cols[name] = rows[name].astype(np.uint64)
    for side in ("fwd", "bwd"):
        for f in DIRECTION_FIELDS:
            cols[f"{side}.{f}"] = rows[f"{side}.{f}"].astype(np.float64)
    for f in _CONTEXT:
        cols[f"ctx.{f}"] = rows[f"ctx.{f}"].astype(np.float64)
    return cols


def feature_matrix(cols: Mapping[str, Array]) -> npt.NDArray[np.float32]:
    """The float32 feature matrix (rows: flows, columns: :data:`FEATURES`)."""
    n = len(cols["protocol"])
    out = np.empty((n, len(FEATURES)), dtype=np.float32)
    first = np.asarray(cols["first_ts_ns"], dtype=np.uint64)
    last = np.asarray(cols["last_ts_ns"], dtype=np.uint64)
    duration = np.where(last > first, last - first, 0).astype(np.float64) / 1e9
    derived = {
        "src_port_lt1024": np.minimum(cols["src_port"], 1024.0),
        "duration_s": duration,
        "bytes_ratio": cols["bwd.bytes"] / (cols["fwd.bytes"] + 1.0),
        "packets_per_s": (cols["fwd.packets"] + cols["bwd.packets"]) / np.maximum(duration, 1e-3),
    }
    for j, name in enumerate(FEATURES):
        out[:, j] = derived[name] if name in derived else cols[name]
    return out


# The program of native rows_to_matrix (native/protowire.c) for packed rows: one op per
# feature (kind, then four (offset, type) references into PACKED_DTYPE), made from
# FEATURES and the row dtype so neither is restated; the derived features are
# feature_matrix's expressions, computed there in the same order.
_MX_COLUMN, _MX_CAP, _MX_DURATION, _MX_RATIO, _MX_RATE = range(1, 6)


def _ref(name: str) -> tuple[int, int]:
    fields: dict[str, Any] = dict(PACKED_DTYPE.fields or {})
    dt, offset = fields[name][:2]
    if dt.kind == "f" and dt.itemsize == 4:
        return offset, 5
    if dt.kind == "u" and dt.itemsize in (1, 2, 4, 8):
        return offset, dt.itemsize
    raise TypeError(f"packed column {name!r} is {dt}: no native feature reader for it")


def _matrix_program() -> npt.NDArray[np.int32]:
    derived = {
        "src_port_lt1024": (_MX_CAP, [_ref("src_port"), (1024, 0)]),
        "duration_s": (_MX_DURATION, [_ref("first_ts_ns"), _ref("last_ts_ns")]),
        "bytes_ratio": (_MX_RATIO, [_ref("bwd.bytes"), _ref("fwd.bytes")]),
        "packets_per_s": (
            _MX_RATE,
            [_ref("fwd.packets"), _ref("bwd.packets"), _ref("first_ts_ns"), _ref("last_ts_ns")],
        ),
    }
    ops = []
    for name in FEATURES:
        kind, refs = derived[name] if name in derived else (_MX_COLUMN, [_ref(name)])
        refs = refs + [(0, 0)] * (4 - len(refs))
        ops.append([kind, *(v for ref in refs for v in ref)])
    return np.array(ops, dtype=np.int32)


_MATRIX_OPS = _matrix_program()


def packed_feature_matrix(rows: npt.NDArray[np.void]) -> npt.NDArray[np.float32]:
    """``feature_matrix(columns_from_packed(rows))`` in one C pass over the packed rows
    (native rows_to_matrix): the same bits (tests/detector/test_packed_features.py),
    without a float64 column per field."""
    if rows.dtype != PACKED_DTYPE:
        raise TypeError(f"expected rows of proto.flowpack.PACKED_DTYPE, got {rows.dtype}")
    out = np.empty((len(rows), len(FEATURES)), dtype=np.float32)
    _flowengine.rows_to_matrix(np.ascontiguousarray(rows), PACKED_DTYPE.itemsize,
                               _MATRIX_OPS, out)  # fmt: skip
    return out


def scorer_inputs(
    records: Sequence[FlowRecord],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[str]]:
    """What ``Scorer.score`` takes for decoded records: the feature matrix, the sniffer's
    fast scores and the fast rules that set them (mld detector run, mld rag import)."""
    x = feature_matrix(columns_from_records(records))
    fast = np.fromiter((r.fast_score for r in records), dtype=np.float32, count=len(records))
    return x, fast, [r.fast_rule for r in records]
