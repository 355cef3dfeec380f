"""The JSON lines of ``mld detector analyze``: one object per flow, built a column at a time.

:func:`analysis_rows` is the definition: one dict per flow, in the key order written, with
``json.dumps(row, separators=(",", ":"))`` as its line. :func:`analysis_lines` writes the
same lines byte for byte without a Python step per flow (:func:`analysis_text`): the
native ``json_lines`` assembles every line from the whole columns (integers, floats as
``round`` then ``repr`` would write them, addresses as ``ipaddress`` would, the
explanation lists) and constant text, and the strings are encoded once per distinct value
of the batch. tests/detector/test_jsonlines.py checks the two agree on real captures.

The fields, in order (``FIELDS``): flow_id, src_ip, src_port, dst_ip, dst_port, proto,
first_ts, last_ts, packets, bytes, fast_score, fast_rule, ml_score, ml_family,
family_scores, family, final_score, label, top_features, end_reason, observation_point,
model_version.
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import json
import multiprocessing
import operator
import queue
import threading
from collections import Counter, deque
from collections.abc import Sequence
from multiprocessing.pool import AsyncResult, Pool
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from detector.analysis import AnalyzedBatch
from detector.features import FEATURES
from detector.scoring import LABEL_NAMES, Scores, TopFeatures
from native._flowengine import json_lines
from proto.events_pb2 import LABEL_BENIGN
from sniffer.records import FlowColumns

__all__ = [
    "FIELDS",
    "PROTO_NAMES",
    "LineWriter",
    "alert_counts",
    "analysis_lines",
    "analysis_parts",
    "analysis_rows",
]

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 47: "GRE", 132: "SCTP"}

FIELDS = (
    "flow_id",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "proto",
    "first_ts",
    "last_ts",
    "packets",
    "bytes",
    "fast_score",
    "fast_rule",
    "ml_score",
    "ml_family",
    "family_scores",
    "family",
    "final_score",
    "label",
    "top_features",
    "end_reason",
    "observation_point",
    "model_version",
)

# Decimals each float field is rounded to.
_SCORE_DIGITS = 4
_TS_DIGITS = 6
_FEATURE_VALUE_DIGITS = 4
_FEATURE_WEIGHT_DIGITS = 3


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def analysis_rows(batch: AnalyzedBatch) -> list[dict[str, Any]]:
    """The JSON objects of one analysed batch, one dict per flow (the reference:
    :func:`analysis_lines` writes exactly ``json.dumps`` of these, faster)."""
    s = batch.scores
    assert s is not None
    f = batch.flows
    cols = {
        name: f[name].tolist()
        for name in (
            "flow_id",
            "src_port",
            "dst_port",
            "protocol",
            "first_ts_ns",
            "last_ts_ns",
            "end_reason",
            "fwd_packets",
            "bwd_packets",
            "fwd_bytes",
            "bwd_bytes",
        )
    }
    fam_scores = s.family_scores.tolist()
    fast, ml, final = s.fast_score.tolist(), s.ml_score.tolist(), s.final_score.tolist()
    labels = s.label.tolist()
    rows = []
    for i in range(len(f)):
        rows.append(
            {
                "flow_id": cols["flow_id"][i],
                "src_ip": _addr(f.src_addr[i]),
                "src_port": cols["src_port"][i],
                "dst_ip": _addr(f.dst_addr[i]),
                "dst_port": cols["dst_port"][i],
                "proto": PROTO_NAMES.get(cols["protocol"][i], str(cols["protocol"][i])),
                "first_ts": round(cols["first_ts_ns"][i] / 1e9, _TS_DIGITS),
                "last_ts": round(cols["last_ts_ns"][i] / 1e9, _TS_DIGITS),
                "packets": cols["fwd_packets"][i] + cols["bwd_packets"][i],
                "bytes": cols["fwd_bytes"][i] + cols["bwd_bytes"][i],
                "fast_score": round(fast[i], _SCORE_DIGITS),
                "fast_rule": s.fast_rule[i],
                "ml_score": round(ml[i], _SCORE_DIGITS),
                "ml_family": s.ml_family[i],
                "family_scores": {
                    fam: round(v, _SCORE_DIGITS)
                    for fam, v in zip(s.families, fam_scores[i], strict=True)
                },
                "family": s.family[i] if labels[i] != LABEL_BENIGN else "",
                "final_score": round(final[i], _SCORE_DIGITS),
                "label": LABEL_NAMES[labels[i]],
                "top_features": [
                    {
                        "name": n,
                        "value": round(v, _FEATURE_VALUE_DIGITS),
                        "weight": round(w, _FEATURE_WEIGHT_DIGITS),
                    }
                    for n, v, w in s.top_features[i]
                ],
                "end_reason": cols["end_reason"][i],
                "observation_point": f.observation_point,
                "model_version": s.model_version,
            }
        )
    return rows


# ---- column at a time ----------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _strings(values: Sequence[str]) -> list[str]:
    """JSON text of each string, each distinct string encoded once."""
    table = {v: _dumps(v) for v in set(values)}
    return list(map(table.__getitem__, values))


def _label_names(labels: npt.NDArray[Any], encode: bool = True) -> list[str]:
    """The label name (JSON text if ``encode``) of each label value."""
    values, inverse = np.unique(labels, return_inverse=True)
    names = [LABEL_NAMES[v] for v in values.tolist()]
    table = np.array([_dumps(n) for n in names] if encode else names, dtype=object)
    return table[inverse].tolist() if len(labels) else []


def _take(values: Sequence[Any], rows: npt.NDArray[np.intp]) -> list[Any]:
    """``values[i]`` for each i of ``rows`` (no object array in between)."""
    if len(rows) == 0:
        return []
    if len(rows) == len(values) and (len(rows) == 0 or rows[-1] == len(rows) - 1):
        return list(values)  # rows is every row, in order (np.arange)
    picked = operator.itemgetter(*rows.tolist())(values)
    return list(picked) if len(rows) > 1 else [picked]


# The explanation's feature names as JSON text, made once.
_FEATURE_NAMES_JSON = [json.dumps(name) for name in FEATURES]


def analysis_lines(batch: AnalyzedBatch, *, alerts_only: bool = False) -> list[str]:
    """``json.dumps`` of :func:`analysis_rows` (compact separators), one string per flow
    (``alerts_only``: only the non-benign ones), made column by column."""
    s = batch.scores
    assert s is not None
    if not isinstance(s.top_features, TopFeatures):
        rows = analysis_rows(batch)
        return [_dumps(r) for r in rows if not alerts_only or r["label"] != "benign"]
    text = analysis_text(batch, alerts_only=alerts_only).decode()
    return text.split("\n")[:-1] if text else []


def _part(name: str, first: bool = False) -> bytes:
    return (("{" if first else ",") + f'"{name}":').encode()


def analysis_text(batch: AnalyzedBatch, *, alerts_only: bool = False) -> bytes:
    """The lines of :func:`analysis_lines` as UTF-8, each ended by a newline, assembled in
    native code (``json_lines``) from whole columns: numbers and addresses are formatted
    there, strings once per distinct value here."""
    made = analysis_parts(batch, alerts_only=alerts_only)
    return json_lines(*made) if made is not None else b""


LineParts = tuple[int, list[bytes | tuple[Any, ...]]]


def analysis_parts(batch: AnalyzedBatch, *, alerts_only: bool = False) -> LineParts | None:
    """The arguments of ``json_lines`` for the lines of :func:`analysis_text` (None when no
    flow of the batch is written). Every column in them is a copy, so the text can be made
    later, on another thread, whatever happens to the batch meanwhile."""
    s = batch.scores
    assert s is not None and isinstance(s.top_features, TopFeatures)
    f = batch.flows
    label = np.asarray(s.label)
    rows = np.flatnonzero(label != LABEL_BENIGN) if alerts_only else np.arange(len(f))
    if len(rows) == 0:
        return None

    def col(name: str, dtype: type = np.int64) -> npt.NDArray[Any]:
        return np.ascontiguousarray(np.asarray(f[name])[rows], dtype=dtype)

    def floats(values: npt.NDArray[Any], ndigits: int) -> tuple[str, npt.NDArray[Any], int]:
        return ("f", np.ascontiguousarray(values, dtype=np.float64), ndigits)

    protos = col("protocol").tolist()
    proto_text = {p: _dumps(PROTO_NAMES.get(p, str(p))) for p in set(protos)}
    labels = label[rows]
    family = np.where(labels != LABEL_BENIGN, np.asarray(s.family, dtype=object)[rows], "")
    packets = col("fwd_packets", np.uint64) + col("bwd_packets", np.uint64)
    nbytes = col("fwd_bytes", np.uint64) + col("bwd_bytes", np.uint64)
    family_scores: list[bytes | tuple[Any, ...]] = [b"{}"]
    if s.families:
        scores = np.asarray(s.family_scores, dtype=np.float64)[rows]
        family_scores = []
        for j, fam in enumerate(s.families):
            family_scores.append((("{" if j == 0 else ",") + _dumps(fam) + ":").encode())
            family_scores.append(floats(scores[:, j], _SCORE_DIGITS))
        family_scores.append(b"}")
    top = s.top_features
    explanation: list[bytes | tuple[Any, ...]] = [b"[]"]
    if top.indices.ndim == 2 and top.indices.shape[1] > 0:
        explanation = [
            (
                "t",
                np.ascontiguousarray(top.indices[rows], dtype=np.int64),
                np.ascontiguousarray(np.asarray(top.values)[rows], dtype=np.float64),
                np.ascontiguousarray(np.asarray(top.weights)[rows], dtype=np.float64),
                _FEATURE_NAMES_JSON,
                _FEATURE_VALUE_DIGITS,
                _FEATURE_WEIGHT_DIGITS,
            )
        ]
    fields: list[list[bytes | tuple[Any, ...]]] = [
        [("u", col("flow_id", np.uint64))],
        [("a", f.src_keys[rows])],
        [("i", col("src_port"))],
        [("a", f.dst_keys[rows])],
        [("i", col("dst_port"))],
        [("s", list(map(proto_text.__getitem__, protos)))],
        [floats(col("first_ts_ns").astype(np.float64) / 1e9, _TS_DIGITS)],
        [floats(col("last_ts_ns").astype(np.float64) / 1e9, _TS_DIGITS)],
        [("u", packets)],
        [("u", nbytes)],
        [floats(np.asarray(s.fast_score)[rows], _SCORE_DIGITS)],
        [("s", _strings(_take(s.fast_rule, rows)))],
        [floats(np.asarray(s.ml_score)[rows], _SCORE_DIGITS)],
        [("s", _strings(_take(s.ml_family, rows)))],
        family_scores,
        [("s", _strings(family.tolist()))],
        [floats(np.asarray(s.final_score)[rows], _SCORE_DIGITS)],
        [("s", _label_names(labels))],
        explanation,
        [("i", col("end_reason"))],
    ]
    parts: list[bytes | tuple[Any, ...]] = []
    for i, (name, field_parts) in enumerate(zip(FIELDS[:20], fields, strict=True)):
        parts.append(_part(name, first=i == 0))
        parts.extend(field_parts)
    tail = f',"observation_point":{_dumps(f.observation_point)}'
    tail += f',"model_version":{_dumps(s.model_version)}}}'
    parts.append(tail.encode())
    return len(rows), parts


def alert_counts(batch: AnalyzedBatch) -> Counter[tuple[str, str]]:
    """Alerts of the batch by (family, label name)."""
    s = batch.scores
    assert s is not None
    label = np.asarray(s.label)
    counts: Counter[tuple[str, str]] = Counter()
    for value in np.unique(label).tolist():
        if value == LABEL_BENIGN:
            continue
        # One pass over the family names per label (strings, not tuples, are counted).
        of_label = Counter(itertools.compress(s.family, (label == value).tolist()))
        name = LABEL_NAMES[value]
        counts.update({(family, name): n for family, n in of_label.items()})
    return counts


# ---- on several processes ------------------------------------------------------------------

# The flow columns the lines are made of (a batch sent to a worker carries only these).
_LINE_COLUMNS = (
    "flow_id",
    "src_port",
    "dst_port",
    "protocol",
    "first_ts_ns",
    "last_ts_ns",
    "end_reason",
    "fwd_packets",
    "bwd_packets",
    "fwd_bytes",
    "bwd_bytes",
)


def _rows_of(batch: AnalyzedBatch, rows: npt.NDArray[np.intp]) -> AnalyzedBatch:
    """The part of ``batch`` the lines of ``rows`` need: those rows of the columns written
    (no features, context or records), small enough to send to another process."""
    s = batch.scores
    assert s is not None and isinstance(s.top_features, TopFeatures)
    f = batch.flows
    top = s.top_features
    flows = FlowColumns(
        observation_point=f.observation_point,
        cols={name: np.asarray(f[name])[rows] for name in _LINE_COLUMNS},
        src_addr=_take(f.src_addr, rows),
        dst_addr=_take(f.dst_addr, rows),
        dns_entropy=np.zeros(0),
    )
    scores = Scores(
        families=s.families,
        family_scores=np.asarray(s.family_scores)[rows],
        ml_score=np.asarray(s.ml_score)[rows],
        ml_family=_take(s.ml_family, rows),
        fast_score=np.asarray(s.fast_score)[rows],
        fast_rule=_take(s.fast_rule, rows),
        final_score=np.asarray(s.final_score)[rows],
        family=_take(s.family, rows),
        label=np.asarray(s.label)[rows],
        top_features=TopFeatures(top.indices[rows], top.values[rows], top.weights[rows]),
        model_version=s.model_version,
    )
    empty = np.zeros((len(rows), 0), dtype=np.float32)
    return AnalyzedBatch(flows, {}, batch.fast, empty, scores)


def _text(batch: AnalyzedBatch) -> bytes:
    """The batch's lines as UTF-8 (bytes cross the process boundary and reach the file
    without being decoded and encoded again)."""
    return analysis_text(batch)


class LineWriter:
    """Writes the JSON lines of analysed batches to ``out`` in batch order while the caller
    reads and scores the next batches.

    ``jobs`` <= 1 (the default of ``mld detector analyze``): the columns of a batch's lines
    are taken in the caller's thread (:func:`analysis_parts`, a little NumPy), and one writer
    thread makes the text in native code and writes it, both without the GIL, so on a
    second core they overlap the reading and scoring of the next batch. ``jobs`` > 1: the
    lines are made on that many worker processes (forked, so they start with everything
    imported). Only the lines are made elsewhere: the flow engine, the source context and
    the fast rules keep their state across batches and stay in the caller's thread, in
    order. At most 2 batches (``2 * jobs`` with workers) wait for their text; an error
    of the writer (a closed pipe, a full disk) is raised by the next :meth:`write` or by
    :meth:`close`, which writes the rest.
    """

    def __init__(self, out: IO[str], *, alerts_only: bool, jobs: int) -> None:
        self.out = out
        self.alerts_only = alerts_only
        self.jobs = max(1, jobs)
        self._pool: Pool | None = None
        self._pending: deque[AsyncResult[bytes]] = deque()
        self._queue: queue.Queue[LineParts | None] = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop = False
        if self.jobs > 1:
            self._pool = multiprocessing.get_context("fork").Pool(self.jobs)

    def _run(self) -> None:
        """The writer thread: text and write each batch's parts, in order, until None."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._stop or self._error is not None:
                continue  # aborted, or failed: drop the rest
            try:
                fd = self._fd()
                if fd is None:
                    self._put(json_lines(*item))
                else:
                    self.out.flush()  # nothing should be buffered, but keep the order
                    json_lines(*item, fd)
            except BaseException as exc:  # raised again in the caller's thread
                self._error = exc

    def _fd(self) -> int | None:
        """The file descriptor the writer thread writes the text to straight from native
        code (no bytes object: the 276 MB of the bench capture's lines were copied once
        more into fresh memory, a page fault per 4 KiB), or None for an ``out`` without one
        (a StringIO), which gets the text as bytes."""
        if getattr(self.out, "buffer", None) is None:
            return None
        try:
            return self.out.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            return None

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _threaded(self, made: LineParts) -> None:
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mld-json-lines", daemon=True)
            self._thread.start()
        self._queue.put(made)

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def write(self, batch: AnalyzedBatch) -> None:
        s = batch.scores
        assert s is not None
        if self._pool is None or not isinstance(s.top_features, TopFeatures):
            self._drain(block=True)
            if not isinstance(s.top_features, TopFeatures):
                self._join()
                self._raise()
                lines = analysis_lines(batch, alerts_only=self.alerts_only)
                if lines:
                    self.out.write("\n".join(lines) + "\n")
                return
            made = analysis_parts(batch, alerts_only=self.alerts_only)
            if made is not None:
                self._threaded(made)
            return
        label = np.asarray(s.label)
        rows = np.flatnonzero(label != LABEL_BENIGN) if self.alerts_only else np.arange(len(label))
        if len(rows) == 0:
            return
        self._pending.append(self._pool.apply_async(_text, (_rows_of(batch, rows),)))
        self._drain(block=len(self._pending) > 2 * self.jobs)

    def _drain(self, block: bool) -> None:
        """Write the texts that are ready, in order (``block``: wait for the oldest one)."""
        while self._pending and (block or self._pending[0].ready()):
            self._put(self._pending.popleft().get())
            block = False

    def _put(self, text: bytes) -> None:
        raw = getattr(self.out, "buffer", None)
        if raw is None:
            self.out.write(text.decode())
            return
        self.out.flush()
        raw.write(text)

    def close(self) -> None:
        """Write every batch still being made; stop the workers and the writer thread."""
        try:
            self._join()
            self._raise()
            while self._pending:
                self._put(self._pending.popleft().get())
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the workers and the writer thread without writing what they were making
        (an error, a closed pipe); a write under way ends first."""
        self._stop = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._join()
        self._error = None
        self._pending.clear()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
