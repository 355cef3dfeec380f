"""The sniffer: capture sources -> flow records -> source context -> fast rules -> publisher.

Public API::

    SnifferConfig, CaptureConfig, ContextConfig, FastRulesConfig, PublishConfig   settings
    flow_columns, encode_records, FlowColumns     events array -> FlowRecord columns, bytes
    SourceContextTracker                          per-source sliding windows (SourceContext)
    FastRules, FastScores, RULES, ramp            the fast detector
    FlowPipeline, ProcessedFlows                  the three steps above, in order
    PcapSource, XdpSource, FlowSource             capture sources
    first_packet_ts                               a capture file's start, from its headers
    FlowPublisher                                 encrypted FlowBatch sender
    SnifferService                                the long-running loop

The ``mld sniffer run`` and ``mld sniffer flows`` commands live in ``sniffer.cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
    from sniffer.capture_file import first_packet_ts
    from sniffer.config import (
        CaptureConfig,
        ContextConfig,
        FastRulesConfig,
        PublishConfig,
        SnifferConfig,
    )
    from sniffer.fast_rules import RULES, FastRules, FastScores, ramp
    from sniffer.pipeline import FlowPipeline, ProcessedFlows
    from sniffer.publisher import FlowPublisher
    from sniffer.records import FlowColumns, encode_records, flow_columns
    from sniffer.service import SnifferService
    from sniffer.source_context import SourceContextTracker
    from sniffer.sources import CaptureSourceError, FlowSource, PcapSource, RejectedFile, XdpSource

__all__ = [
    "RULES",
    "CaptureConfig",
    "CaptureSourceError",
    "ContextConfig",
    "FastRules",
    "FastRulesConfig",
    "FastScores",
    "FlowColumns",
    "FlowPipeline",
    "FlowPublisher",
    "FlowSource",
    "PcapSource",
    "ProcessedFlows",
    "PublishConfig",
    "RejectedFile",
    "SnifferConfig",
    "SnifferService",
    "SourceContextTracker",
    "XdpSource",
    "encode_records",
    "first_packet_ts",
    "flow_columns",
    "ramp",
]

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "sniffer.capture_file": ("first_packet_ts",),
        "sniffer.config": (
            "CaptureConfig",
            "ContextConfig",
            "FastRulesConfig",
            "PublishConfig",
            "SnifferConfig",
        ),
        "sniffer.fast_rules": (
            "RULES",
            "FastRules",
            "FastScores",
            "ramp",
        ),
        "sniffer.pipeline": (
            "FlowPipeline",
            "ProcessedFlows",
        ),
        "sniffer.publisher": ("FlowPublisher",),
        "sniffer.records": (
            "FlowColumns",
            "encode_records",
            "flow_columns",
        ),
        "sniffer.service": ("SnifferService",),
        "sniffer.source_context": ("SourceContextTracker",),
        "sniffer.sources": (
            "CaptureSourceError",
            "FlowSource",
            "PcapSource",
            "RejectedFile",
            "XdpSource",
        ),
    },
)
