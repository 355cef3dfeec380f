"""RaisedFlows.select_flows skips records that cannot change anything; on random streams
of records (flows recurring, interim and final, every label) it decides exactly what the
plain per-record rule decides."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np

from detector.raised import RaisedFlows
from proto.events_pb2 import LABEL_BENIGN, LABEL_MALICIOUS, LABEL_SUSPICIOUS


def _reference(
    raised: OrderedDict[tuple[str, int], int],
    max_flows: int,
    ids: list[int],
    interim: list[bool],
    labels: list[int],
    sensor: str,
) -> list[bool]:
    """The rule, record by record (the module docstring)."""
    out = []
    for flow_id, goes_on, label in zip(ids, interim, labels, strict=True):
        key = (sensor, flow_id)
        before = raised.get(key, 0)
        hit = label in (LABEL_SUSPICIOUS, LABEL_MALICIOUS) and label > before
        out.append(hit)
        if hit:
            before = label
        if not goes_on:
            raised.pop(key, None)
        elif before:
            raised[key] = before
            raised.move_to_end(key)
            if len(raised) > max_flows:
                raised.popitem(last=False)
    return out


def test_select_flows_decides_as_the_per_record_rule() -> None:
    rng = random.Random(7)
    labels_of = [LABEL_BENIGN] * 6 + [LABEL_SUSPICIOUS, LABEL_MALICIOUS]
    for max_flows in (3, 50):
        flows = RaisedFlows(max_flows)
        reference: OrderedDict[tuple[str, int], int] = OrderedDict()
        for _ in range(400):
            n = rng.randint(0, 40)
            ids = [rng.randint(1, 60) for _ in range(n)]
            interim = [rng.random() < 0.6 for _ in range(n)]
            labels = [rng.choice(labels_of) for _ in range(n)]
            sensor = rng.choice(["s1", "s2"])
            want = _reference(reference, max_flows, ids, interim, labels, sensor)
            assert flows.select_flows(ids, interim, labels, sensor) == want
            assert list(flows._raised.items()) == list(reference.items())
            # The per-sensor id sets the batch membership test reads follow the memory.
            by_sensor: dict[str, set[int]] = {}
            for s, f in reference:
                by_sensor.setdefault(s, set()).add(f)
            assert flows._flows_of == by_sensor


def test_select_columns_takes_packed_columns_and_full_64_bit_ids() -> None:
    """The service's call: NumPy columns straight from packed rows (uint64 flow ids, some
    above 2**63, int32 labels), decided as the per-record rule decides."""
    rng = np.random.default_rng(11)
    pool = rng.integers(0, 2**64 - 1, size=40, dtype=np.uint64, endpoint=True)
    flows = RaisedFlows(20)
    reference: OrderedDict[tuple[str, int], int] = OrderedDict()
    labels_of = np.array([LABEL_BENIGN] * 5 + [LABEL_SUSPICIOUS, LABEL_MALICIOUS], np.int32)
    for _ in range(300):
        n = int(rng.integers(0, 50))
        ids = pool[rng.integers(0, len(pool), n)]
        interim = rng.random(n) < 0.5
        labels = labels_of[rng.integers(0, len(labels_of), n)]
        want = _reference(reference, 20, ids.tolist(), interim.tolist(), labels.tolist(), "s")
        got = flows.select_columns(ids, interim, labels, "s")
        assert got.dtype == bool and got.tolist() == want
        assert list(flows._raised.items()) == list(reference.items())
