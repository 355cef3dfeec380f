"""The event schema (``events.proto``) as Python classes.

``events_pb2`` is generated from ``events.proto`` by ``make proto`` (part of ``make install``)
and is never committed; this package re-exports its messages.
"""

from __future__ import annotations

try:
    from proto.events_pb2 import (
        BlockDecision,
        DirectionStats,
        EndReason,
        Family,
        FamilyScore,
        FeatureContribution,
        FlowBatch,
        FlowRecord,
        FlowRef,
        Heartbeat,
        Label,
        SourceContext,
        Verdict,
        VerdictBatch,
    )
except ImportError as exc:  # pragma: no cover - only before the first `make install`
    raise ImportError(
        "proto/events_pb2.py is missing or broken: it is generated from proto/events.proto. "
        "Run `make proto` (or `make install`)."
    ) from exc

__all__ = [
    "BlockDecision",
    "DirectionStats",
    "EndReason",
    "Family",
    "FamilyScore",
    "FeatureContribution",
    "FlowBatch",
    "FlowRecord",
    "FlowRef",
    "Heartbeat",
    "Label",
    "SourceContext",
    "Verdict",
    "VerdictBatch",
]
