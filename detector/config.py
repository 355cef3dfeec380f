"""Typed settings of the detector (the ``detector`` and ``anomaly`` sections of mld.yaml).

Parts: the model bundle and where its compiled libraries go, the score thresholds, the
scoring service's channels (``listen`` for flow batches in, ``verdicts`` and ``events``
out) and the training pipeline (``train``: forest sizes and data caps). ``anomaly`` is
the anomaly model: the detector serves it (enabled, model_dir, alert_threshold, block,
detector/anomaly_model.py) and anomaly/ trains it (the window and forest settings); it
lives here, below both, because anomaly/ builds on detector/ and never the reverse.
Every default is written, commented, in config/mld.yaml; a test keeps the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from base.errors import ConfigError

__all__ = [
    "AnomalyConfig",
    "DetectorConfig",
    "EventsOutput",
    "ListenConfig",
    "OutputConfig",
    "ThresholdsConfig",
    "TrainConfig",
    "VerdictsOutput",
]


@dataclass(frozen=True)
class ThresholdsConfig:
    # final_score at or above this labels a flow suspicious (an alert), in [0, 1].
    alert: float = 0.5
    # final_score at or above this labels a flow malicious and sends its verdict to the
    # firewall, in [0, 1]; per family below, this value for families not listed.
    block: float = 0.9
    # Block threshold per family (ddos, scan, bruteforce, tunnel, lateral, c2).
    block_per_family: dict[str, float] = field(default_factory=dict)
    # Alert threshold per family, this value for families not listed (the family is the
    # verdict's: the forest's, or the fast rule's when the rule scored higher). `mld
    # detector evaluate --calibrate` proposes values from held-out benign captures; ddos
    # is its proposal for the shipped bundle (at most 0.5% of benign flows alerting on the
    # calibration half of the held-out nDPI captures; run it again after retraining).
    alert_per_family: dict[str, float] = field(default_factory=lambda: {"ddos": 0.69})
    # Families whose fast rule alone may make a verdict malicious (sent to the firewall).
    # For the other families, when the fast rule scored higher than the forests and the
    # forests scored the flow under the alert threshold, the verdict is at most suspicious
    # (an alert, never a block). tunnel: the dns_tunnel rule alerted on 0 benign records of
    # the nDPI captures and the lab's benign traffic (detector/README.md).
    fast_rule_alone_blocks: tuple[str, ...] = ("tunnel",)
    # Older key, kept for existing configs: true lets every family's fast rule block alone
    # (as if fast_rule_alone_blocks listed them all); false adds nothing.
    block_on_fast_rule_alone: bool = False

    def fast_rule_alone_may_block(self, family: str) -> bool:
        """Whether ``family``'s fast rule alone may make a verdict malicious."""
        return self.block_on_fast_rule_alone or family in self.fast_rule_alone_blocks

    def alert_of(self, family: str) -> float:
        """The alert threshold of ``family``."""
        return self.alert_per_family.get(family, self.alert)

    def block_of(self, family: str) -> float:
        """The block threshold of ``family``."""
        return self.block_per_family.get(family, self.block)

    def check(self) -> None:
        """Raise ConfigError for thresholds scoring cannot work with, naming the keys."""
        from detector.families import FAMILIES

        problems = []
        values = (
            {"alert": self.alert, "block": self.block}
            | {f"block_per_family.{f}": v for f, v in self.block_per_family.items()}
            | {f"alert_per_family.{f}": v for f, v in self.alert_per_family.items()}
        )
        for key, value in values.items():
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                problems.append(f"{key} is {value}, expected a number in [0, 1]")
        for family in FAMILIES:
            alert, block = self.alert_of(family), self.block_of(family)
            if not math.isnan(alert) and not math.isnan(block) and block < alert:
                problems.append(
                    f"the block threshold of {family} ({block}) is below its alert "
                    f"threshold ({alert}); raise block_per_family.{family} or lower the alert"
                )
        for key in ("block_per_family", "alert_per_family", "fast_rule_alone_blocks"):
            unknown = sorted(set(getattr(self, key)) - set(FAMILIES))
            if unknown:
                problems.append(
                    f"{key} names unknown families {unknown} (families: {', '.join(FAMILIES)})"
                )
        if problems:
            raise ConfigError("invalid detector.thresholds: " + "; ".join(problems))


@dataclass(frozen=True)
class ListenConfig:
    # ZeroMQ endpoint the flow batches arrive on (the sniffer's publish.endpoint).
    endpoint: str = "tcp://127.0.0.1:5571"
    # pull (sniffers PUSH to one detector) or sub (sniffers PUB).
    pattern: Literal["pull", "sub"] = "pull"
    # Bind the endpoint instead of connecting to it; null: PULL binds, SUB connects.
    bind: bool | None = None
    # Channel name bound into every frame; must match the sniffer's publish.channel.
    channel: str = "flows"


@dataclass(frozen=True)
class OutputConfig:
    # Send these batches; false keeps them in the process (counted only).
    enabled: bool = True
    # ZeroMQ endpoint the batches go to.
    endpoint: str = ""
    # push (one receiver) or pub (several subscribers).
    pattern: Literal["push", "pub"] = "push"
    # Bind the endpoint instead of connecting to it; null: PUB binds, PUSH connects.
    bind: bool | None = None
    # Channel name bound into every frame.
    channel: str = ""
    # Peer ids (keys of transport.peers) the batches are sealed for.
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerdictsOutput(OutputConfig):
    """Verdicts at or above the block threshold, to the firewall agent."""

    endpoint: str = "tcp://127.0.0.1:5572"
    channel: str = "verdicts"
    recipients: tuple[str, ...] = ("firewall",)


@dataclass(frozen=True)
class EventsOutput(OutputConfig):
    """Every scored flow, to the RAG store."""

    endpoint: str = "tcp://127.0.0.1:5573"
    channel: str = "events"
    recipients: tuple[str, ...] = ("rag",)


@dataclass(frozen=True)
class TrainConfig:
    # Trees per family forest (families not in n_trees_per_family).
    n_trees: int = 32
    # Deepest split of a tree (families not in max_depth_per_family).
    max_depth: int = 8
    # Per-family tree counts and depths. On attack captures the lab never produced (shared
    # held-out), 64 trees of depth 6 found 96% of scan flows against 78% at depth 8-12; a
    # shallower ddos forest found more but raised false positives on the nDPI captures
    # (depth 4: 18%, depth 12: 2.7%), and the fast rules catch floods anyway (README).
    n_trees_per_family: dict[str, int] = field(default_factory=lambda: {"scan": 64})
    # Per-family depths; bruteforce, tunnel and lateral keep depth 8 (they lose F1 at 4).
    max_depth_per_family: dict[str, int] = field(default_factory=lambda: {"ddos": 12, "scan": 6})
    # Fewest training flows in a leaf.
    min_samples_leaf: int = 2
    # Features tried per split: "sqrt", "log2" or a fraction written as a string ("0.3").
    max_features: str = "sqrt"
    # Flows kept per label per capture (a random, seeded sample past it); floods make
    # hundreds of thousands of near-identical flows that would drown the rest.
    max_flows_per_label: int = 20000
    # Seed of the sampling and of the forests.
    seed: int = 1
    # Worker processes for fitting and compiling (0: all cores).
    jobs: int = 0
    # Features the forests never split on (their column is held constant while fitting;
    # the feature list, and so the bundle's schema, stays the same): per-flow values that
    # name the tool that made a flow or the lab's hosts rather than what the flow does
    # (detector/README.md, "What carries over": the TCP initial windows and the ECN and
    # URG counts, measured there, did not make a better bundle).
    exclude_features: tuple[str, ...] = ()
    # Families that get no forest even when the data has flows of them (their flows stay
    # in the data as negatives of the other families): c2, whose lab beacons are, flow by
    # flow, the lab's own HTTP browsing (the rhythm is between flows, not in one), so a
    # forest could only learn the recipe's request size; its verdicts come from the
    # beacon fast rule (detector/README.md).
    no_forest: tuple[str, ...] = ("c2",)

    def size_of(self, family: str) -> tuple[int, int]:
        """(n_trees, max_depth) of ``family``'s forest."""
        return (
            self.n_trees_per_family.get(family, self.n_trees),
            self.max_depth_per_family.get(family, self.max_depth),
        )


@dataclass(frozen=True)
class DetectorConfig:
    # The model bundle folder; empty means the bundle that ships with ML Defender
    # (detector/bundle). The detector watches it and swaps to a new bundle when it changes.
    bundle_dir: str = ""
    # Where the bundle's forests are compiled to shared libraries; empty means build/models
    # in the source tree, or ~/.cache/mld/models when that is not writable.
    model_cache_dir: str = ""
    # Threads each compiled forest predicts with (tl2cgen Predictor nthread). Keep 1: a
    # batch of 100 flows is too small to split, and 2 made scoring 10-70x slower on a busy
    # 2-core machine (bench/README.md, live path); run more detectors to use more cores.
    predict_threads: int = 1
    # How often the bundle folder is checked for a new bundle, in seconds (0: never).
    reload_interval_s: float = 2.0
    # Features reported per verdict as its explanation.
    top_features: int = 5
    # Identifier of this detector in verdicts; empty means node.id, else the host name.
    detector_id: str = ""
    # Alerts (suspicious and malicious verdicts) as Suricata EVE JSON lines appended to
    # this file, for log shippers and SIEMs; empty: none (detector/eve.py).
    eve_log: str = ""
    # Also a flow event per scored flow in eve_log (same flow_id and community_id as its
    # alert); many more lines.
    eve_flows: bool = False
    # A stats event in eve_log this often, in seconds (uptime, alerts, flows); 0: none.
    eve_stats_interval_s: float = 60.0
    # Flows remembered as already alerted or blocked, so that a flow scored again by its
    # interim records (sniffer.capture.interim_s) raises one alert and one verdict; past
    # it the least recently raised is forgotten (about 150 bytes each).
    raised_flows_max: int = 65536
    # Scored-event batches waiting for the events output (one per flow batch). Events are
    # sent from a thread of their own, so a RAG store that falls behind never holds up
    # scoring or verdicts; when this many batches wait, further ones are dropped and
    # counted (events_dropped_queue_full in /metrics). 64 batches of 300 events (the
    # transport's batch_records) are about 0.2-0.3 s at the detector's full rate and hold
    # ~0.6 MB each (~40 MB when full).
    events_queue_batches: int = 64
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    # Verdicts at or above the block threshold go to the firewall agent.
    verdicts: VerdictsOutput = field(default_factory=VerdictsOutput)
    # Every scored flow goes to the RAG store.
    events: EventsOutput = field(default_factory=EventsOutput)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class AnomalyConfig:
    # Score every flow with the anomaly model too (family "anomaly"); false: the detector
    # runs no anomaly model and its verdicts are what they were without one.
    enabled: bool = False
    # Folder of the model versions, the "current" pointer and the decision history; empty
    # means <node.state_dir>/anomaly.
    model_dir: str = ""
    # The training window: at most this many of the newest stored flows ...
    window_flows: int = 200000
    # ... that started at most this many seconds before the newest stored flow (30 days).
    window_s: float = 2592000.0
    # Fewest flows in the window to train on; with fewer, training is skipped.
    min_flows: int = 1000
    # Seconds between trainings of `mld anomaly run`.
    retrain_interval_s: float = 3600.0
    # Isolation trees in the model.
    n_trees: int = 100
    # Flows each tree is grown on (drawn from the window; sets the depth, log2 of it).
    max_samples: int = 256
    # Share of the window held back from fitting, to judge the new model against the
    # running one before it is swapped in.
    holdout_fraction: float = 0.1
    # Anomaly score (0-1; ordinary flows score about 0.5 and below) at or above which a
    # flow is an alert (suspicious).
    alert_threshold: float = 0.6
    # Let the anomaly family block: a flow at or above detector.thresholds.block is then
    # malicious. false: the anomaly family alerts, it never makes a verdict malicious.
    block: bool = False
    # A new model is refused when the share of held-back flows it scores at or above
    # alert_threshold exceeds the running model's share by more than this (plus two
    # standard errors of that share, so a few flows of a small holdout do not count).
    max_worse: float = 0.05
    # Seed of the window split and of the trees.
    seed: int = 1

    def path(self, state_dir: str) -> Path:
        """The model folder: ``model_dir``, or ``<state_dir>/anomaly``."""
        return Path(self.model_dir) if self.model_dir else Path(state_dir) / "anomaly"

    def check(self) -> None:
        """Raise ConfigError for values training or scoring cannot work with."""
        problems = []
        for key in ("alert_threshold", "holdout_fraction", "max_worse"):
            value = getattr(self, key)
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                problems.append(f"{key} is {value}, expected a number in [0, 1]")
        if not self.holdout_fraction < 0.9:
            problems.append(f"holdout_fraction is {self.holdout_fraction}, expected below 0.9")
        for key in ("window_flows", "min_flows", "n_trees", "max_samples"):
            if getattr(self, key) < 1:
                problems.append(f"{key} is {getattr(self, key)}, expected at least 1")
        if self.min_flows > self.window_flows:
            problems.append(f"min_flows ({self.min_flows}) exceeds window_flows")
        for key in ("window_s", "retrain_interval_s"):
            if not getattr(self, key) > 0:
                problems.append(f"{key} is {getattr(self, key)}, expected above 0")
        if problems:
            raise ConfigError("invalid anomaly settings: " + "; ".join(problems))
