"""Serialized Verdicts of a batch made in C from columns, with no Verdict message built.

The scoring service sends a Verdict for every record when scored events go to the RAG
store, and building each one field by field in Python (detector/verdicts.py,
build_verdicts: about eleven sub-messages per verdict) was most of the detector's time
per record. Here a batch's verdicts become one structured NumPy array (:func:`verdict_rows`:
the packed rows' flow keys, the Scores' columns, string-table indexes for the texts) and
native code writes the protobuf bytes of each row (native.rows_to_protobuf, the writer
that already serializes FlowRecords from packed rows), driven by a program made here
from the Verdict descriptor. The bytes are what ``build_verdicts(...)`` then
``SerializeToString()`` gives, byte for byte (tests/detector/test_verdictpack.py).

Top features: a flow's explanation lists only features of positive weight
(detector.scoring.TopFeatures), so each of the k slots is written when its bit of
``top_present`` is set; at most 8 slots (more falls back to build_verdicts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from detector.features import FEATURES
from detector.scoring import Scores
from proto.events_pb2 import FamilyScore, FeatureContribution, FlowRef, Verdict
from proto.flowpack import FLAG_BITS

__all__ = ["MAX_TOP", "verdict_bytes"]

MAX_TOP = 8
_VARINT, _FLOAT, _FLAG, _ADDR, _STRING, _BEGIN, _END = range(1, 8)


def _dtype(families: int, top: int) -> np.dtype[Any]:
    return np.dtype(
        [
            # One-byte columns first: native ops read up to 4 bytes from their offset.
            ("flags", "u1"),
            ("top_present", "u1"),
            ("verdict_id", "<u2"),
            ("sensor_id", "<u2"),
            ("flow_id", "<u8"),
            ("ip_version", "u1"),
            ("src_addr", "u1", (16,)),
            ("dst_addr", "u1", (16,)),
            ("src_port", "<u4"),
            ("dst_port", "<u4"),
            ("protocol", "<u4"),
            ("first_ts_ns", "<u8"),
            ("last_ts_ns", "<u8"),
            ("fast_score", "<f4"),
            ("fast_rule", "<u2"),
            ("fam_family", "<u2", (families,)),
            ("fam_score", "<f4", (families,)),
            ("ml_score", "<f4"),
            ("ml_family", "<u2"),
            ("final_score", "<f4"),
            ("label", "<u4"),
            ("family", "<u2"),
            ("top_name", "<u2", (top,)),
            ("top_value", "<f4", (top,)),
            ("top_weight", "<f4", (top,)),
            ("model_version", "<u2"),
            ("scored_ts_ns", "<u8"),
        ]
    )


def _program(dt: np.dtype[Any], families: int, top: int) -> npt.NDArray[np.int32]:
    off = {name: spec[1] for name, spec in (dt.fields or {}).items()}
    ops: list[tuple[int, int, int, int, int]] = []
    num = {f.name: f.number for f in Verdict.DESCRIPTOR.fields}
    ref = {f.name: f.number for f in FlowRef.DESCRIPTOR.fields}
    fam = {f.name: f.number for f in FamilyScore.DESCRIPTOR.fields}
    feat = {f.name: f.number for f in FeatureContribution.DESCRIPTOR.fields}
    for f in sorted(Verdict.DESCRIPTOR.fields, key=lambda f: f.number):
        name = f.name
        if name == "flow":
            ops.append((_BEGIN, num[name], 0, -1, 0))
            for r in sorted(FlowRef.DESCRIPTOR.fields, key=lambda f: f.number):
                o = off[r.name]
                if r.name == "sensor_id":
                    ops.append((_STRING, ref[r.name], o, 0, 0))
                elif r.name in ("src_addr", "dst_addr"):
                    ops.append((_ADDR, ref[r.name], o, off["ip_version"], 0))
                else:
                    ops.append((_VARINT, ref[r.name], o, dt.fields[r.name][0].itemsize, 0))  # type: ignore[index]
            ops.append((_END, num[name], 0, 0, 0))
        elif name == "family_scores":
            for k in range(families):
                ops.append((_BEGIN, num[name], 0, -1, 0))
                ops.append((_STRING, fam["family"], off["fam_family"] + 2 * k, 0, 0))
                ops.append((_FLOAT, fam["score"], off["fam_score"] + 4 * k, 0, 0))
                ops.append((_END, num[name], 0, 0, 0))
        elif name == "top_features":
            for k in range(top):
                ops.append((_BEGIN, num[name], 0, off["top_present"], 1 << k))
                ops.append((_STRING, feat["name"], off["top_name"] + 2 * k, 0, 0))
                ops.append((_FLOAT, feat["value"], off["top_value"] + 4 * k, 0, 0))
                ops.append((_FLOAT, feat["weight"], off["top_weight"] + 4 * k, 0, 0))
                ops.append((_END, num[name], 0, 0, 0))
        elif name == "src_verified":
            ops.append((_FLAG, num[name], off["flags"], FLAG_BITS["src_verified"], 0))
        elif f.type == f.TYPE_STRING:
            ops.append((_STRING, num[name], off[name], 0, 0))
        elif f.type == f.TYPE_FLOAT:
            ops.append((_FLOAT, num[name], off[name], 0, 0))
        elif f.type in (f.TYPE_UINT64, f.TYPE_UINT32, f.TYPE_ENUM):
            ops.append((_VARINT, num[name], off[name], dt.fields[name][0].itemsize, 0))  # type: ignore[index]
        else:
            raise TypeError(f"Verdict.{name}: no packed encoding for its type")
    return np.array(ops, dtype=np.int32)


_FEATURE_BYTES = [name.encode() for name in FEATURES]

_PROGRAMS: dict[tuple[int, int], tuple[np.dtype[Any], npt.NDArray[np.int32]]] = {}


def _layout(families: int, top: int) -> tuple[np.dtype[Any], npt.NDArray[np.int32]]:
    key = (families, top)
    if key not in _PROGRAMS:
        dt = _dtype(families, top)
        _PROGRAMS[key] = (dt, _program(dt, families, top))
    return _PROGRAMS[key]


def _index(strings: list[str], table: dict[str, int], values: list[str]) -> list[int]:
    out = []
    for v in values:
        i = table.get(v)
        if i is None:
            i = table[v] = len(strings)
            strings.append(v)
        out.append(i)
    return out


def verdict_bytes(
    scores: Scores,
    rows: npt.NDArray[np.void],
    sensor_id: str,
    verdict_ids: list[str],
    scored_ts_ns: int,
) -> list[bytes] | None:
    """The serialized Verdict of each packed row (proto/flowpack.py) and its scores, in
    order; None when the explanation has more than MAX_TOP slots (use build_verdicts)."""
    import native

    n = len(rows)
    if len(scores) != n or len(verdict_ids) != n:
        raise ValueError(f"{n} rows, {len(scores)} scores and {len(verdict_ids)} verdict ids")
    top = scores.top_features
    k = top.indices.shape[1] if top.indices.ndim == 2 else 0
    if k > MAX_TOP:
        return None
    families = len(scores.families)
    dt, program = _layout(families, k)
    out = np.zeros(n, dtype=dt)
    if n == 0:
        return []
    # The string table: the verdict ids, the feature names (a fixed block, encoded once
    # per process), then the batch's other texts, each distinct one once.
    strings: list[str] = [*verdict_ids, *FEATURES]
    table: dict[str, int] = {}
    out["verdict_id"] = np.arange(n)
    (sensor,) = _index(strings, table, [sensor_id])
    out["sensor_id"] = sensor
    for name in ("flow_id", "ip_version", "src_addr", "dst_addr", "src_port", "dst_port",
                 "protocol", "first_ts_ns", "last_ts_ns"):  # fmt: skip
        out[name] = rows[name]
    out["flags"] = rows["flags"] & FLAG_BITS["src_verified"]
    out["fast_score"] = scores.fast_score
    codes = scores.codes
    if codes is not None:  # each distinct name indexed once, the rows by NumPy
        out["fast_rule"] = np.asarray(_index(strings, table, list(codes.rules)), np.intp)[
            codes.rule
        ]
    else:
        out["fast_rule"] = _index(strings, table, scores.fast_rule)
    out["fam_family"] = _index(strings, table, list(scores.families))
    out["fam_score"] = scores.family_scores
    out["ml_score"] = scores.ml_score
    if codes is not None:
        names = np.asarray(_index(strings, table, list(codes.names)), np.intp)
        out["ml_family"] = names[codes.ml_family]
        out["family"] = names[codes.family]
    else:
        out["ml_family"] = _index(strings, table, scores.ml_family)
        out["family"] = _index(strings, table, scores.family)
    out["final_score"] = scores.final_score
    out["label"] = scores.label
    if k:
        out["top_name"] = top.indices + n  # the feature names' block follows the ids
        out["top_value"] = top.values
        out["top_weight"] = top.weights
        bits = (np.asarray(top.weights) > 0) << np.arange(k)
        out["top_present"] = bits.sum(axis=1)
    (version,) = _index(strings, table, [scores.model_version])
    out["model_version"] = version
    out["scored_ts_ns"] = scored_ts_ns
    if len(strings) > 0xFFFF:  # indexes are uint16
        return None
    rest = n + len(FEATURES)
    encoded = [s.encode() for s in verdict_ids]
    encoded += _FEATURE_BYTES
    encoded += [s.encode() for s in strings[rest:]]
    result: list[bytes] = native._flowengine.rows_to_protobuf(out, dt.itemsize, program, encoded)
    return result
