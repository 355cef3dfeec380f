"""RaisedFlows.select_flows skips records that cannot change anything; on random streams
of records (flows recurring, interim and final, every label) it decides exactly what the
plain per-record rule decides."""

from __future__ import annotations

import random
from collections import OrderedDict

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
