"""FlowHistory.previous (sniffer/interim.py) skips, without a Python step, the records that
cannot read or change the history (final records of flows it does not hold); what it
returns and keeps must be what the per-record definition below gives, on random streams
of interim and final records that cross batches and hit the cap (max_flows 1000: always
by flow, _grouped; 7: mostly record by record, _in_order; 45: both)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from sniffer.interim import HISTORY_COLUMNS, FlowHistory
from sniffer.records import FlowColumns


def _reference(
    last: OrderedDict[int, tuple[float, ...]], max_flows: int, flows: FlowColumns
) -> tuple[np.ndarray, np.ndarray, int]:
    """The per-record definition: first?, previous counters, evictions."""
    n = len(flows)
    current = np.column_stack([*(flows[c] for c in HISTORY_COLUMNS), flows.dns_entropy])
    prev = np.zeros_like(current, dtype=np.float64)
    first = np.ones(n, dtype=bool)
    evicted = 0
    for i in range(n):
        fid, is_interim = int(flows["flow_id"][i]), bool(flows["interim"][i])
        before = last.pop(fid, None) if not is_interim else last.get(fid)
        if before is not None:
            first[i] = False
            prev[i] = before
        if is_interim:
            last[fid] = tuple(current[i].tolist())
            last.move_to_end(fid)
            if len(last) > max_flows:
                last.popitem(last=False)
                evicted += 1
    return first, prev, evicted


def _batch(rng: np.random.Generator, n: int, interim_share: float) -> FlowColumns:
    cols = {c: rng.integers(0, 50, n).astype(np.uint32) for c in HISTORY_COLUMNS}
    # A few flows with ids that need all 64 bits, many records each.
    pool = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64)
    cols["flow_id"] = pool[rng.integers(0, len(pool), n)]
    cols["interim"] = rng.random(n) < interim_share
    return FlowColumns(
        observation_point="x",
        cols=cols,
        src_addr=[b"\x01\x02\x03\x04"] * n,
        dst_addr=[b"\x05\x06\x07\x08"] * n,
        dns_entropy=rng.random(n),
    )


@pytest.mark.parametrize("max_flows", [1000, 45, 7])
def test_history_equals_the_per_record_definition(max_flows: int) -> None:
    rng = np.random.default_rng(max_flows)
    history = FlowHistory(max_flows)
    ref: OrderedDict[int, tuple[float, ...]] = OrderedDict()
    evicted = 0
    for b in range(60):
        # Some batches hold no interim record at all (the fast path), some only final ones.
        share = (0.0, 0.3, 0.7, 1.0)[b % 4]
        flows = _batch(rng, int(rng.integers(0, 200)), share)
        got = history.previous(flows)
        first, prev, ev = _reference(ref, max_flows, flows)
        evicted += ev
        assert got.first.tolist() == first.tolist(), b
        for j, name in enumerate(HISTORY_COLUMNS):
            assert got.values[name].tolist() == prev[:, j].tolist(), (b, name)
        assert got.values["dns_entropy"].tolist() == prev[:, -1].tolist(), b
        assert list(history._last.items()) == list(ref.items()), b
        assert history.evicted == evicted
    if max_flows < 40:
        assert evicted > 0
