"""Typed settings of the firewall agent (the ``firewall`` section of mld.yaml).

Parts: when to block (thresholds per family), for how long (TTL base, growth for repeat
offenders, cap), what is never blocked (allowlist), how fast new blocks may come (token
bucket), dry-run, the prefix a block covers, bounds against bad input and verdict storms,
and where the decision log lives. Every default is written, commented, in
config/mld.yaml; a test keeps the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from base.errors import ConfigError
from detector.config import OutputConfig
from detector.families import VERDICT_FAMILIES
from firewall.allowlist import AUTO_ALLOWLIST_SOURCES, AutoSource

__all__ = ["BlocksOutput", "FirewallConfig"]


@dataclass(frozen=True)
class BlocksOutput(OutputConfig):
    """Every decision (block, extend, unblock, refusal), to the RAG store (firewall/publish.py)."""

    endpoint: str = "tcp://127.0.0.1:5574"
    channel: str = "blocks"
    recipients: tuple[str, ...] = ("rag",)


@dataclass(frozen=True)
class FirewallConfig:
    # Block when a verdict's final_score is at or above this, in [0, 1]; families not in
    # block_threshold_per_family.
    block_threshold: float = 0.9
    # Block threshold per family, e.g. {tunnel: 0.95}.
    block_threshold_per_family: dict[str, float] = field(default_factory=dict)
    # Families a verdict may name; a verdict with another family is rejected (counted).
    families: tuple[str, ...] = VERDICT_FAMILIES
    # Length of a first block, in seconds.
    ttl_base_s: int = 300
    # A repeat offence within repeat_window_s multiplies the TTL by this (x4, x16, ...).
    ttl_growth: float = 4.0
    # Longest TTL the growth reaches, in seconds.
    ttl_cap_s: int = 86400
    # Offences further apart than this, in seconds, start again from ttl_base_s.
    repeat_window_s: int = 86400
    # Any TTL above this, in seconds, is absurd: rejected (counted), never applied.
    max_ttl_s: int = 604800
    # An active block is extended only when that moves its expiry at least this many
    # seconds later (spares the backend and the log a write per verdict in a storm).
    min_extend_s: int = 60
    # Networks never blocked whatever the score (CIDR, IPv4 or IPv6): put management
    # networks and partners here. What auto_allowlist names is added at start.
    allowlist: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # What the agent allowlists by itself at start, so that forged packets "from" them
    # cannot get them blocked: own_addresses (this host's), gateways (its next hops),
    # connected (its directly connected subnets), resolvers (/etc/resolv.conf), ntp
    # (servers written as addresses in chrony, ntpd or timesyncd configuration).
    auto_allowlist: tuple[AutoSource, ...] = AUTO_ALLOWLIST_SOURCES
    # Prefix length a block covers: 32 blocks one IPv4 address.
    prefix_len_v4: int = 32
    # Prefix length of an IPv6 block: 64 blocks the sender's whole subnet, since an
    # attacker can rotate through the 2^64 addresses of its own /64 (128: one address).
    prefix_len_v6: int = 64
    # New blocks allowed per second on average (token bucket), all sources together:
    # the backend's budget. The excess is logged as rate_limited and not applied.
    # Extending an active block is not limited.
    max_new_blocks_per_s: float = 100.0
    # New blocks allowed at once before the rate applies (bucket size).
    new_blocks_burst: int = 200
    # New blocks allowed per second within one neighbourhood (the prefix of
    # rate_prefix_len_v4/v6 around the source), so that a storm of verdicts about one
    # network cannot spend the global budget that blocks in other networks need.
    new_blocks_per_prefix_per_s: float = 1.0
    # New blocks allowed at once within one neighbourhood.
    new_blocks_per_prefix_burst: int = 32
    # Neighbourhood of the per-prefix new-block limit: an IPv4 /24, an IPv6 /48.
    rate_prefix_len_v4: int = 24
    rate_prefix_len_v6: int = 48
    # Active blocks at most: past it a new block is refused (table_full, counted and
    # logged) and no active block is ever lifted to make room. Also the size of the
    # offender history and of the per-prefix buckets (least recently used forgotten).
    max_tracked: int = 65536
    # Block a source that never completed a TCP handshake (Verdict.src_verified false).
    # false: such a verdict is skipped (outcome unverified, counted per victim, the alert
    # still goes out), because every packet of it may be forged: 7,000 SYNs "from" a
    # resolver must not get the resolver blocked. true blocks them too (a sensor that sees
    # one direction only, accepting that forged sources get blocked). Not a live setting:
    # a running agent keeps the value it started with.
    block_unverified: bool = False
    # Log every decision without applying any (backend none).
    dry_run: bool = False
    # SQLite decision log; empty means <node.state_dir>/firewall/decisions.sqlite.
    decision_log: str = ""
    # Suricata EVE drop events (one per block, extension and unblock) appended to this
    # file, for the SIEM that reads the detector's alerts; empty: none (detector/eve.py).
    eve_log: str = ""
    # Days decisions are kept; older ones are deleted hourly by the running agent (the
    # latest block/extend/unblock per prefix is always kept: restore needs it). 0 keeps
    # every decision for ever.
    decision_log_days: float = 90.0
    # Enforcement point: auto (XDP when a flow program is attached, else nftables), xdp,
    # or nftables.
    backend: Literal["auto", "xdp", "nftables"] = "auto"
    # How often expired blocks are removed, in seconds.
    expiry_interval_s: float = 1.0
    # ZeroMQ endpoint the verdicts arrive on (the detector's detector.verdicts.endpoint).
    listen_endpoint: str = "tcp://127.0.0.1:5572"
    # pull (one detector PUSHes) or sub (detectors PUB).
    listen_pattern: Literal["pull", "sub"] = "pull"
    # Bind the endpoint instead of connecting to it; null: PULL binds, SUB connects.
    listen_bind: bool | None = None
    # Channel name bound into every frame; must match detector.verdicts.channel.
    channel: str = "verdicts"
    # Local control socket for mld firewall list/unblock/flush (mode 0600); empty means
    # <node.state_dir>/firewall/control.sock.
    control_socket: str = ""
    # Decisions to the RAG store (rag.blocks_endpoint), so the console can say what was
    # blocked and why. With control.endpoints set, a PUSH follows the live RAG stores.
    blocks: BlocksOutput = field(default_factory=BlocksOutput)

    def control_socket_path(self, state_dir: str | Path) -> Path:
        """The control socket: ``control_socket``, or the default under ``state_dir``."""
        if self.control_socket:
            return Path(self.control_socket)
        return Path(state_dir) / "firewall" / "control.sock"

    def decision_log_path(self, state_dir: str | Path) -> Path:
        """The decision log file: ``decision_log``, or the default under ``state_dir``."""
        if self.decision_log:
            return Path(self.decision_log)
        return Path(state_dir) / "firewall" / "decisions.sqlite"

    def threshold_for(self, family: str) -> float:
        """Block threshold of ``family``."""
        return self.block_threshold_per_family.get(family, self.block_threshold)

    def check(self) -> None:
        """Raise ConfigError for values the policy cannot work with, naming the keys."""
        problems = []
        thresholds = {"block_threshold": self.block_threshold} | {
            f"block_threshold_per_family.{f}": v for f, v in self.block_threshold_per_family.items()
        }
        for key, value in thresholds.items():
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                problems.append(f"{key} is {value}, expected a number in [0, 1]")
        unknown = sorted(set(self.block_threshold_per_family) - set(self.families))
        if unknown:
            problems.append(f"block_threshold_per_family names unknown families {unknown}")
        if not 0 < self.ttl_base_s <= self.ttl_cap_s <= self.max_ttl_s:
            problems.append(
                f"expected 0 < ttl_base_s ({self.ttl_base_s}) <= ttl_cap_s ({self.ttl_cap_s})"
                f" <= max_ttl_s ({self.max_ttl_s})"
            )
        if not self.ttl_growth >= 1.0:
            problems.append(f"ttl_growth is {self.ttl_growth}, expected at least 1")
        if not 0 <= self.prefix_len_v4 <= 32 or not 0 <= self.prefix_len_v6 <= 128:
            problems.append("prefix_len_v4 must be in [0, 32] and prefix_len_v6 in [0, 128]")
        if not 0 <= self.rate_prefix_len_v4 <= 32 or not 0 <= self.rate_prefix_len_v6 <= 128:
            problems.append(
                "rate_prefix_len_v4 must be in [0, 32] and rate_prefix_len_v6 in [0, 128]"
            )
        if not self.max_new_blocks_per_s > 0 or self.new_blocks_burst < 1:
            problems.append("max_new_blocks_per_s must be above 0 and new_blocks_burst at least 1")
        if not self.new_blocks_per_prefix_per_s > 0 or self.new_blocks_per_prefix_burst < 1:
            problems.append(
                "new_blocks_per_prefix_per_s must be above 0 and new_blocks_per_prefix_burst "
                "at least 1"
            )
        if self.max_tracked < 1:
            problems.append(f"max_tracked is {self.max_tracked}, expected at least 1")
        if problems:
            raise ConfigError(
                "invalid firewall settings: "
                + "; ".join(problems)
                + "; fix mld.yaml (or the etcd override, config/firewall/<key>)"
            )
