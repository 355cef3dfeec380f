"""One step of the sniffer: flow events -> columns -> source context -> fast rules -> bytes.

The service (live or offline) and ``mld sniffer flows`` run the same step, so a capture read
offline gets the same context and fast scores as the same traffic seen live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sniffer.config import SnifferConfig
from sniffer.dns_windows import DnsWindows
from sniffer.fast_rules import FastRules, FastScores
from sniffer.interim import FlowHistory
from sniffer.overload import score_floods
from sniffer.records import (
    Array,
    FlowColumns,
    PackedFlows,
    encode_records,
    flow_columns,
    pack_records,
)
from sniffer.source_context import SourceContextTracker, VerifiedSources

__all__ = ["FlowPipeline", "ProcessedFlows"]


@dataclass(frozen=True)
class ProcessedFlows:
    """The records made from one events array, as columns and serialized."""

    flows: FlowColumns
    context: dict[str, Array]
    scores: FastScores
    records: list[bytes]
    # FlowRecord.src_verified per record (VerifiedSources).
    src_verified: Array
    # The records as packed rows (proto/flowpack.py) when asked for (the live publisher).
    packed: PackedFlows | None = None

    def __len__(self) -> int:
        return len(self.flows)


class FlowPipeline:
    """Keeps the context and rule state across batches; counts records made."""

    def __init__(self, config: SnifferConfig, dns: DnsWindows | None = None) -> None:
        """``dns``: the DNS query windows of the same packets (sniffer/dns_windows.py,
        :func:`sniffer.dns_windows.for_source`); None leaves their columns at 0."""
        self.context = SourceContextTracker(config.context)
        self.dns = dns
        # Interim records: what earlier records of a flow already counted (sniffer/interim.py).
        self.history = FlowHistory(config.context.max_entries)
        self.verified = VerifiedSources(config.context)
        self.rules = FastRules(config.rules, config.context)
        self.records = 0
        self.interim_records = 0
        self.flood_scored = 0  # flood records (sniffer/overload.py) a rate rule scored

    def process(
        self,
        events: npt.NDArray[np.void],
        observation_point: str,
        encode: bool = True,
        pack: bool = False,
    ) -> ProcessedFlows:
        """Columns, context and fast scores of ``events``; serialized FlowRecords too unless
        ``encode`` is false (offline analysis works on the columns and skips that cost),
        and the packed rows the live publisher sends when ``pack`` is true."""
        # The live publisher's rows are made first, in C, and the columns view them.
        flows = flow_columns(events, observation_point, packed=pack)
        previous = self.history.previous(flows)
        context = self.context.update(flows, previous)
        if self.dns is not None:
            context.update(self.dns.lookup(flows))
        verified = self.verified.update(flows)
        scores = self.rules.score(flows, context, previous)
        self.flood_scored += score_floods(events, scores, self.rules.config)
        records = (
            encode_records(flows, context, scores.score, scores.rule, verified) if encode else []
        )
        packed = pack_records(flows, context, scores.score, scores.rule, verified) if pack else None
        self.records += len(flows)
        self.interim_records += int(np.count_nonzero(flows["interim"]))
        return ProcessedFlows(flows, context, scores, records, verified, packed)

    def stats(self) -> dict[str, int]:
        out = {"records": self.records, "scored": self.rules.scored}
        out.update({f"fired.{rule}": n for rule, n in sorted(self.rules.fired.items())})
        out["context_sources"] = len(self.context.windows)
        out["context_evicted_sources"] = self.context.windows.evicted_keys
        out["verified_sources"] = len(self.verified)
        out["verified_evicted_sources"] = self.verified.evicted
        out["interim_records"] = self.interim_records
        out["interim_flows_open"] = len(self.history)
        out["interim_flows_evicted"] = self.history.evicted
        out["flood_scored"] = self.flood_scored
        if self.dns is not None:
            out.update({f"dns_windows.{k}": v for k, v in self.dns.stats().items()})
        return out
