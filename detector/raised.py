"""RaisedFlows: a flow is alerted and blocked once, not once per record.

With interim records (FlowRecord.interim, sniffer.capture.interim_s) one flow is scored
several times: every few seconds while it goes on, then at its end. Each record gets its
verdict and goes to the RAG store (which keeps the latest state of the flow), but an alert
(EVE) and a verdict to the firewall are raised only when the flow's label rises above what
was already raised for it: the first suspicious-or-malicious record alerts, the first
malicious one also goes to the firewall; a flow that was suspicious and turns malicious
alerts again (it now blocks); later records of the same label raise nothing.

Flows are named by (sensor_id, flow_id) (the id hashes the 5-tuple and the first packet's
time, so an interim record and its flow's final record share it). The final record
(interim false) forgets the flow: nothing of it comes after. Memory is bounded:
past ``max_flows`` the least recently raised flow is forgotten (counted in ``evicted``);
forgetting only costs one more alert and verdict for that flow if it is still going on
(the firewall's own repeat handling sees an address it already blocks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from base.errors import ConfigError
from proto.events_pb2 import LABEL_MALICIOUS, LABEL_SUSPICIOUS, FlowRecord

__all__ = ["RaisedFlows"]

_ALERTING = frozenset((LABEL_SUSPICIOUS, LABEL_MALICIOUS))


class RaisedFlows:
    """Which flows already had an alert or a verdict raised, and at which label."""

    def __init__(self, max_flows: int) -> None:
        if max_flows < 1:
            raise ConfigError(
                f"detector.raised_flows_max is {max_flows}: it must be at least 1 (fix mld.yaml)"
            )
        self.max_flows = max_flows
        self._raised: OrderedDict[tuple[str, int], int] = OrderedDict()
        # The flow ids in _raised per sensor, for a whole batch's membership test at once.
        self._flows_of: dict[str, set[int]] = {}
        self.evicted = 0
        self.repeats = 0  # alert-level records of a flow that raised nothing new

    def __len__(self) -> int:
        return len(self._raised)

    def select(
        self, records: Sequence[FlowRecord], labels: Sequence[int], sensor_id: str
    ) -> list[bool]:
        """Per record: raise it (alert, and block if malicious)? Updates the memory.

        True when the record's label is suspicious or malicious and above the label
        already raised for its flow."""
        return self.select_flows(
            [r.flow_id for r in records], [r.interim for r in records], labels, sensor_id
        )

    def select_flows(
        self,
        flow_ids: Sequence[int] | npt.NDArray[np.uint64],
        interim: Sequence[bool] | npt.NDArray[np.bool_],
        labels: Sequence[int] | npt.NDArray[np.int32],
        sensor_id: str,
    ) -> list[bool]:
        """:meth:`select` for records given as their flow ids and interim flags (the
        columns of packed rows, proto/flowpack.py), so no FlowRecord is built for it."""
        out: list[bool] = self.select_columns(flow_ids, interim, labels, sensor_id).tolist()
        return out

    def select_columns(
        self,
        flow_ids: Sequence[int] | npt.NDArray[np.uint64],
        interim: Sequence[bool] | npt.NDArray[np.bool_],
        labels: Sequence[int] | npt.NDArray[np.int32],
        sensor_id: str,
    ) -> npt.NDArray[np.bool_]:
        """:meth:`select_flows` over columns, as a bool array."""
        ids = np.asarray(flow_ids, dtype=np.uint64)
        goes = np.asarray(interim, dtype=bool)
        lab = np.asarray(labels)
        n = len(ids)
        if not (n == len(lab) == len(goes)):
            raise ValueError(f"{n} flow ids, {len(lab)} labels, {len(goes)} interim flags")
        out = np.zeros(n, dtype=bool)
        # Only records of flows that raise here or were raised before can change
        # anything: a benign record of a flow never raised neither raises nor is
        # remembered. Most records are that: the flows that can are found over the whole
        # batch (NumPy, and set operations in C), and the loop runs over their records only.
        alerting = (lab == LABEL_SUSPICIOUS) | (lab == LABEL_MALICIOUS)
        flows = set(ids[alerting].tolist())
        id_list = ids.tolist()
        known = self._flows_of.get(sensor_id)
        if known:
            flows.update(known.intersection(id_list))
        if not flows:
            return out
        lab_list, go_list = lab.tolist(), goes.tolist()
        raised = self._raised
        hits: list[int] = []
        for i in [i for i, f in enumerate(id_list) if f in flows]:
            flow_id, label = id_list[i], lab_list[i]
            key = (sensor_id, flow_id)
            before = raised.get(key, 0)
            if label in _ALERTING:
                if label > before:
                    hits.append(i)
                    before = label
                else:
                    self.repeats += 1
            if not go_list[i]:
                if raised.pop(key, None) is not None:  # the flow's last record
                    self._forget(key)
            elif before:
                if key not in raised:
                    self._flows_of.setdefault(sensor_id, set()).add(flow_id)
                raised[key] = before
                raised.move_to_end(key)
                if len(raised) > self.max_flows:
                    old, _ = raised.popitem(last=False)
                    self._forget(old)
                    self.evicted += 1
        out[hits] = True
        return out

    def _forget(self, key: tuple[str, int]) -> None:
        """Drop a flow no longer in ``_raised`` from its sensor's set of flow ids."""
        flows = self._flows_of.get(key[0])
        if flows is not None:
            flows.discard(key[1])
            if not flows:
                del self._flows_of[key[0]]
