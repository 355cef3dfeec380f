"""The detector: family forests compiled to native code, ``max(fast, ml)`` scoring.

Public API::

    DetectorConfig, ThresholdsConfig, TrainConfig          settings (mld.yaml ``detector``)
    FAMILIES, LABEL_FAMILY, FAST_RULE_FAMILY               families and label mapping
    FEATURES, SCHEMA_HASH, feature_matrix,                 the feature vector, from columns
    columns_from_flows, columns_from_records               or from FlowRecords
    load_bundle, read_manifest, write_bundle, LoadedBundle the model bundle
    forest_to_treelite, compile_model, CompileOptions      sklearn -> treelite -> .so
    Scorer, Scores, default_scorer                         scores, labels, explanations
    analyze_captures, AnalyzedBatch, AnalysisStats         the whole path on capture files
    scored_events, scored_batches                          ... as ScoredEvents (rag, watch)
    train_bundle                                           the training pipeline
    DetectorService, BundleWatcher                         mld detector run and its hot reload

The ``mld detector run|analyze|train|evaluate`` commands live in ``detector.cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
    from detector.analysis import (
        AnalysisStats,
        AnalyzedBatch,
        analyze_captures,
        scored_batches,
        scored_events,
    )
    from detector.bundle import LoadedBundle, load_bundle, read_manifest, write_bundle
    from detector.compile import CompileOptions, compile_model, forest_to_treelite
    from detector.config import DetectorConfig, ThresholdsConfig, TrainConfig
    from detector.families import FAMILIES, FAST_RULE_FAMILY, LABEL_FAMILY
    from detector.features import (
        FEATURES,
        SCHEMA_HASH,
        columns_from_flows,
        columns_from_records,
        feature_matrix,
    )
    from detector.reload import BundleWatcher
    from detector.scoring import Scorer, Scores, default_scorer
    from detector.service import DetectorService
    from detector.train import train_bundle

__all__ = [
    "FAMILIES",
    "FAST_RULE_FAMILY",
    "FEATURES",
    "LABEL_FAMILY",
    "SCHEMA_HASH",
    "AnalysisStats",
    "AnalyzedBatch",
    "BundleWatcher",
    "CompileOptions",
    "DetectorConfig",
    "DetectorService",
    "LoadedBundle",
    "Scorer",
    "Scores",
    "ThresholdsConfig",
    "TrainConfig",
    "analyze_captures",
    "columns_from_flows",
    "columns_from_records",
    "compile_model",
    "default_scorer",
    "feature_matrix",
    "forest_to_treelite",
    "load_bundle",
    "read_manifest",
    "scored_batches",
    "scored_events",
    "train_bundle",
    "write_bundle",
]

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "detector.analysis": (
            "AnalysisStats",
            "AnalyzedBatch",
            "analyze_captures",
            "scored_batches",
            "scored_events",
        ),
        "detector.bundle": (
            "LoadedBundle",
            "load_bundle",
            "read_manifest",
            "write_bundle",
        ),
        "detector.compile": (
            "CompileOptions",
            "compile_model",
            "forest_to_treelite",
        ),
        "detector.config": (
            "DetectorConfig",
            "ThresholdsConfig",
            "TrainConfig",
        ),
        "detector.families": (
            "FAMILIES",
            "FAST_RULE_FAMILY",
            "LABEL_FAMILY",
        ),
        "detector.features": (
            "FEATURES",
            "SCHEMA_HASH",
            "columns_from_flows",
            "columns_from_records",
            "feature_matrix",
        ),
        "detector.reload": ("BundleWatcher",),
        "detector.scoring": (
            "Scorer",
            "Scores",
            "default_scorer",
        ),
        "detector.service": ("DetectorService",),
        "detector.train": ("train_bundle",),
    },
)
