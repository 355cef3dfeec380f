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
        flow_ids: Sequence[int],
        interim: Sequence[bool],
        labels: Sequence[int],
        sensor_id: str,
    ) -> list[bool]:
        """:meth:`select` for records given as their flow ids and interim flags (the
        columns of packed rows, proto/flowpack.py), so no FlowRecord is built for it."""
        n = len(flow_ids)
        if not (n == len(labels) == len(interim)):
            raise ValueError(f"{n} flow ids, {len(labels)} labels, {len(interim)} interim flags")
        out = [False] * n
        raised = self._raised
        # Only records of flows that raise here or were raised before can change
        # anything: a benign record of a flow never raised neither raises nor is
        # remembered. Most records are that, so the loop below runs over the others only.
        ids = list(flow_ids)
        flows = {f for f, label in zip(ids, labels, strict=True) if label in _ALERTING}
        if raised:
            flows.update(f for f in set(ids) if (sensor_id, f) in raised)
        if not flows:
            return out
        for i in (i for i, f in enumerate(ids) if f in flows):
            flow_id, label, goes_on = ids[i], labels[i], interim[i]
            key = (sensor_id, flow_id)
            before = raised.get(key, 0)
            if label in _ALERTING:
                if label > before:
                    out[i] = True
                    before = label
                else:
                    self.repeats += 1
            if not goes_on:
                raised.pop(key, None)  # the flow's last record
            elif before:
                raised[key] = before
                raised.move_to_end(key)
                if len(raised) > self.max_flows:
                    raised.popitem(last=False)
                    self.evicted += 1
        return out
