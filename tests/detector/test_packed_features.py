"""The detector's feature matrix made in C from packed rows (``packed_feature_matrix``,
native ``rows_to_matrix``) against the NumPy path it replaces in DetectorService.handle
(``feature_matrix(columns_from_packed(rows))``): the same bits, on the rows the sniffer's
real pipeline makes from real captures, and on rows of random values at the edges of every
column's range (uint64 counters beyond 2**53, a last timestamp before the first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config import load_config
from detector.features import (
    FEATURES,
    columns_from_packed,
    feature_matrix,
    packed_feature_matrix,
)
from native import _flowengine
from proto.flowpack import PACKED_DTYPE, take_rows
from sniffer.pipeline import FlowPipeline
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

CAPTURES = [
    SHARED_DATA / "pcaps/ndpi/dns-exf.pcap",
    SHARED_DATA / "pcaps/ndpi/http_ipv6.pcap",
    SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap",
    SHARED_DATA / "pcaps/ndpi/1kxun.pcap",
    SHARED_DATA / "pcaps/suricata-verify/bug-4663-03__icmp_and_ssh.pcap",
]


def _bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_native_feature_matrix_equals_the_numpy_path(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    scfg = load_config().sniffer
    pipeline = FlowPipeline(scfg)
    source = PcapSource([path], scfg.capture)
    seen = 0
    for events, obs in [*source.batches(), *source.flush()]:
        if not len(events):
            continue
        packed = pipeline.process(events, obs, encode=False, pack=True).packed
        assert packed is not None
        want = feature_matrix(columns_from_packed(packed.rows))
        got = packed_feature_matrix(packed.rows)
        assert got.shape == (len(events), len(FEATURES)) and got.dtype == np.float32
        assert _bits(got) == _bits(want)
        # A slice of a batch (the rows the detector gets are a view of a FlowBatch).
        assert _bits(packed_feature_matrix(packed.rows[1::2])) == _bits(want[1::2])
        seen += len(events)
    assert seen


def test_native_feature_matrix_equals_the_numpy_path_at_the_edges() -> None:
    rng = np.random.default_rng(20)
    rows = np.zeros(5000, dtype=PACKED_DTYPE)
    for name in PACKED_DTYPE.names or ():
        dt = PACKED_DTYPE.fields[name][0]  # type: ignore[index]
        if dt.kind == "u" and not dt.shape:
            top = np.iinfo(dt).max
            # Small values, values near the top of the type, and everything between.
            rows[name] = np.where(
                rng.random(len(rows)) < 0.5,
                rng.integers(0, 2000, len(rows), dtype=np.uint64),
                rng.integers(0, top, len(rows), dtype=np.uint64, endpoint=True),
            ).astype(dt)
        elif dt.kind == "f":
            rows[name] = (rng.standard_normal(len(rows)) * 10.0 ** rng.integers(-3, 30)).astype(
                np.float32
            )
    rows["last_ts_ns"][::3] = rows["first_ts_ns"][::3] - 1  # before the first: duration 0
    rows["last_ts_ns"][1::3] = rows["first_ts_ns"][1::3] + 999_999  # under 1 ms
    with np.errstate(all="ignore"):
        want = feature_matrix(columns_from_packed(rows))
    assert _bits(packed_feature_matrix(rows)) == _bits(want)


def test_rows_to_matrix_refuses_ops_outside_the_row_and_wrong_sizes() -> None:
    rows = np.zeros(4, dtype=PACKED_DTYPE)
    out = np.empty((4, 1), dtype=np.float32)
    size = PACKED_DTYPE.itemsize
    for op in (
        [1, size - 2, 4, 0, 0, 0, 0, 0, 0],  # reads past the row
        [1, 0, 3, 0, 0, 0, 0, 0, 0],  # no such width
        [9, 0, 4, 0, 0, 0, 0, 0, 0],  # no such kind
        [3, 0, 4, 8, 8, 0, 0, 0, 0],  # a duration of 4-byte timestamps
    ):
        with pytest.raises(ValueError, match="out of the row"):
            _flowengine.rows_to_matrix(rows, size, np.array([op], dtype=np.int32), out)
    with pytest.raises(ValueError, match="wrong size"):
        _flowengine.rows_to_matrix(
            rows, size, np.array([[1, 0, 4, 0, 0, 0, 0, 0, 0]], dtype=np.int32),
            np.empty((3, 1), dtype=np.float32),
        )  # fmt: skip
    with pytest.raises(TypeError, match="PACKED_DTYPE"):
        packed_feature_matrix(np.zeros(2, dtype=[("x", "<u4")]))


def test_take_rows_equals_numpy_fancy_indexing() -> None:
    """The rows the detector keeps for its verdicts (``take_rows``, a row of bytes at a
    time) are NumPy's ``rows[index]``: same bytes, any order, repeats, none."""
    path = SHARED_DATA / "pcaps/ndpi/1kxun.pcap"
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    scfg = load_config().sniffer
    source = PcapSource([path], scfg.capture)
    events = next(ev for ev, _ in [*source.batches(), *source.flush()] if len(ev) > 50)
    packed = FlowPipeline(scfg).process(events, "x", encode=False, pack=True).packed
    assert packed is not None
    rows = packed.rows
    for index in (
        np.flatnonzero(rows["fast_score"] >= 0)[::3],
        np.array([7, 3, 3, 0, len(rows) - 1]),
        np.array([], dtype=np.intp),
    ):
        got = take_rows(rows, index)
        assert got.dtype == PACKED_DTYPE
        assert _bits(got) == _bits(rows[index])
    assert _bits(take_rows(rows[1::2], np.array([0, 2]))) == _bits(rows[1::2][[0, 2]])
