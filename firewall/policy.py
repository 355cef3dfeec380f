"""The firewall's decisions: which verdicts become blocks, for how long, and when not.

``Policy.decide(verdict)`` turns one ``Verdict`` into one ``Decision``; ``expire()``,
``unblock()`` and ``flush()`` give the unblocks. The policy is pure logic with its own
clock: it calls no backend. The agent applies the decisions (XDP blocklist map or
nftables) and records them in the decision log. In order, a verdict is:

1. rejected, counted by reason, when malformed: ``bad_address`` (not 4/16 bytes, version
   mismatch, unspecified, multicast, broadcast), ``unknown_family``, ``bad_score`` (NaN,
   below 0, above 1), ``absurd_ttl`` (a requested TTL not in (0, max_ttl_s]);
2. skipped (``below_threshold``) when final_score is below its family's block threshold;
3. skipped (``allowlisted``) when the blocked prefix overlaps an allowed network,
   whatever the score;
4. skipped (``unverified``) when the verdict's source never completed a TCP handshake
   (``Verdict.src_verified`` false) and ``block_unverified`` is off (the default): every
   packet of such a source may have been forged ("from" a resolver, a partner, an inside
   server), and blocking it would block whom the forger chose. The alert still goes out
   (the detector sends it); the policy counts these skips per victim (the flow's
   destination, :meth:`Policy.unverified_victims`), since a flood of forged sources is
   mitigated where it lands, not by blocking addresses that never sent it;
5. for a prefix already blocked and not expired: an ``extend`` when the new expiry is at
   least ``min_extend_s`` later, else skipped (``already_blocked``);
6. a new ``block``, unless ``max_tracked`` blocks are active already (``table_full``:
   refused, counted, the active blocks stay), or the new-blocks token bucket of its
   neighbourhood (the /24 or /48 around it, ``rate_prefix_len_v4/v6``) or the global one
   is empty (``rate_limited``, not applied). A repeat offence within ``repeat_window_s``
   multiplies the TTL by ``ttl_growth`` per earlier offence, up to ``ttl_cap_s``.

Acting decisions come out ``pending`` (the agent applies them) or ``dry_run``. An active
block is never lifted to make room for another: a flood of verdicts about many sources
(forged ones, say) must not free the real attackers it hides. The offender history and
the neighbourhoods' token buckets hold at most ``max_tracked`` prefixes each; past it the
least recently used is forgotten (counted): that costs a repeat offender its longer TTL,
never a block.

``reconfigure(config)`` takes new values of the :data:`LIVE_SETTINGS` (from etcd, while
running) and keeps the active blocks, offender histories and counters. Active blocks
keep the expiry they were given; the new thresholds and TTLs apply to the next verdicts.
An active block that the new allowlist covers comes out as an unblock (reason
``allowlisted by config change``), since the allowlist means "never blocked".
"""

from __future__ import annotations

import ipaddress
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from base.errors import ConfigError
from firewall.allowlist import Allowlist, IPAddress, IPNetwork, local_addresses, unmap
from firewall.config import FirewallConfig
from proto.events_pb2 import Verdict

__all__ = [
    "LIVE_SETTINGS",
    "REJECT_REASONS",
    "Action",
    "ActiveBlock",
    "Decision",
    "Outcome",
    "Policy",
    "local_addresses",
]

Action = Literal["block", "extend", "unblock", "skip", "reject"]
# pending: the agent is to apply it. The rest say why nothing is to be applied.
Outcome = Literal[
    "pending",
    "dry_run",
    "allowlisted",
    "rate_limited",
    "table_full",
    "below_threshold",
    "already_blocked",
    "unverified",
    "rejected",
]
# Victims (destinations of skipped unverified verdicts) whose counts are kept at once.
UNVERIFIED_VICTIMS_MAX = 4096
REJECT_REASONS = ("bad_address", "unknown_family", "bad_score", "absurd_ttl")
# FirewallConfig fields the policy takes while running (Policy.reconfigure); any other
# setting applies when the agent restarts.
LIVE_SETTINGS = (
    "block_threshold",
    "block_threshold_per_family",
    "ttl_base_s",
    "ttl_growth",
    "ttl_cap_s",
    "repeat_window_s",
    "max_ttl_s",
    "min_extend_s",
    "allowlist",
    "max_new_blocks_per_s",
    "new_blocks_burst",
    "new_blocks_per_prefix_per_s",
    "new_blocks_per_prefix_burst",
)


@dataclass(frozen=True)
class Decision:
    """What to do about one prefix, and why."""

    action: Action
    outcome: Outcome
    # Network address of the prefix ("192.0.2.7"); for a bad address, its bytes in hex.
    addr: str
    # Prefix length in bits (32/128 for one address); 0 when the address was bad.
    prefix_len: int
    # Block duration in seconds; 0 for unblock, skip and reject.
    ttl_s: int
    # When the block ends, seconds since the epoch; 0.0 for unblock, skip and reject.
    expires_ts: float
    # Human-readable ("scan: final_score 0.97 >= 0.90; 2nd offence, ttl 4x").
    reason: str
    family: str
    final_score: float
    verdict_ids: tuple[str, ...]
    # When it was decided, seconds since the epoch (the policy's clock).
    decided_ts: float
    # For rejects, the counter it is counted under (one of REJECT_REASONS); else "".
    rejected: str = ""

    @property
    def network(self) -> str:
        """The prefix in CIDR notation ("192.0.2.7/32")."""
        return f"{self.addr}/{self.prefix_len}"

    @property
    def acts(self) -> bool:
        """True when the agent has something to apply (block, extend, unblock)."""
        return self.action in ("block", "extend", "unblock") and self.outcome == "pending"


@dataclass(frozen=True)
class ActiveBlock:
    """A prefix the policy holds blocked (for ``mld firewall list`` and restore)."""

    addr: str
    prefix_len: int
    reason: str
    family: str
    final_score: float
    verdict_ids: tuple[str, ...]
    # When the block started, and when it ends, seconds since the epoch.
    since: float
    expires_ts: float

    @property
    def network(self) -> str:
        return f"{self.addr}/{self.prefix_len}"


@dataclass
class _Offender:
    offences: int
    last_ts: float


@dataclass
class _Bucket:
    """A token bucket of new blocks: ``tokens`` left, refilled up to ``refilled``."""

    tokens: float
    refilled: float


class Policy:
    """Block decisions from verdicts; see the module docstring for the rules."""

    def __init__(
        self,
        config: FirewallConfig,
        allowlist_extra: Iterable[str | IPAddress | IPNetwork] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        config.check()
        self.config = config
        self._allowlist_extra = tuple(allowlist_extra)
        self.allowlist = self._build_allowlist(config)
        self._clock = clock
        self._families = frozenset(config.families)
        self._active: OrderedDict[IPNetwork, ActiveBlock] = OrderedDict()
        self._offenders: OrderedDict[IPNetwork, _Offender] = OrderedDict()
        self._global = _Bucket(float(config.new_blocks_burst), clock())
        self._buckets: OrderedDict[IPNetwork, _Bucket] = OrderedDict()
        # Unverified verdicts skipped per destination address (least recently hit
        # forgotten past UNVERIFIED_VICTIMS_MAX).
        self._victims: OrderedDict[str, int] = OrderedDict()
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "verdicts",
                "block",
                "extend",
                "unblock",
                "below_threshold",
                "allowlisted",
                "already_blocked",
                "unverified",
                "rate_limited",
                "table_full",
                "dry_run",
                "evicted_offenders",
                "evicted_buckets",
                *(f"rejected_{reason}" for reason in REJECT_REASONS),
            ),
            0,
        )

    # --- verdicts ------------------------------------------------------------------

    def decide(self, verdict: Verdict, ttl_s: int | None = None) -> Decision:
        """The decision on one verdict. ``ttl_s`` overrides the computed TTL (operator
        blocks); it must lie in (0, max_ttl_s]."""
        self._counters["verdicts"] += 1
        now = self._clock()
        family = verdict.family
        score = float(verdict.final_score)
        ids = (verdict.verdict_id,) if verdict.verdict_id else ()
        base = Decision("skip", "pending", "", 0, 0, 0.0, "", family, score, ids, now)

        net, problem = _network(verdict, self.config)
        if net is None:
            return self._reject(base, "bad_address", problem)
        base = replace(base, addr=str(net.network_address), prefix_len=net.prefixlen)
        if family not in self._families:
            known = ", ".join(sorted(self._families))
            return self._reject(base, "unknown_family", f"family {family!r} is not {known}")
        if math.isnan(score) or not 0.0 <= score <= 1.0:
            return self._reject(base, "bad_score", f"final_score {score!r} is not in [0, 1]")
        if ttl_s is not None and not 0 < ttl_s <= self.config.max_ttl_s:
            limit = self.config.max_ttl_s
            return self._reject(base, "absurd_ttl", f"ttl {ttl_s}s is not in (0, {limit}]")

        # Scores travel as float32: compare with the threshold rounded the same way, so a
        # score of exactly 0.9 meets a threshold of 0.9.
        threshold = _float32(self.config.threshold_for(family))
        if score < threshold:
            self._counters["below_threshold"] += 1
            why = f"{family}: final_score {score:.2f} < {threshold:.2f}"
            return replace(base, action="skip", outcome="below_threshold", reason=why)
        why = f"{family}: final_score {score:.2f} >= {threshold:.2f}"
        if self.allowlist.covers(net):
            self._counters["allowlisted"] += 1
            why += "; allowlisted, never blocked"
            return replace(base, action="skip", outcome="allowlisted", reason=why)
        if not verdict.src_verified and not self.config.block_unverified:
            self._counters["unverified"] += 1
            victim = _victim(verdict)
            self._victims[victim] = self._victims.pop(victim, 0) + 1
            if len(self._victims) > UNVERIFIED_VICTIMS_MAX:
                self._victims.popitem(last=False)
            why += (
                f"; not blocked: the source never completed a handshake, it may be forged "
                f"(victim {victim})"
            )
            return replace(base, action="skip", outcome="unverified", reason=why)

        current = self._active.get(net)
        if current is not None and current.expires_ts > now:
            return self._extend(base, net, current, why, ttl_s)
        return self._block(base, net, why, ttl_s)

    def _extend(
        self, base: Decision, net: IPNetwork, current: ActiveBlock, why: str, ttl_s: int | None
    ) -> Decision:
        now = base.decided_ts
        offender = self._offenders.get(net)
        offences = offender.offences if offender is not None else 1
        ttl, factor = self._ttl(offences) if ttl_s is None else (ttl_s, 1)
        expires = now + ttl
        if expires < current.expires_ts + self.config.min_extend_s:
            self._counters["already_blocked"] += 1
            why += f"; already blocked until {current.expires_ts:.0f}"
            return replace(base, action="skip", outcome="already_blocked", reason=why)
        why += f"; {_ordinal(offences)} offence, extended, ttl {_times(factor)}"
        decision = replace(base, action="extend", ttl_s=ttl, expires_ts=expires, reason=why)
        decision = self._outcome(decision)
        scores = max(current.final_score, base.final_score)
        ids = (*current.verdict_ids, *base.verdict_ids)[-16:]
        block = replace(
            current, reason=why, final_score=scores, verdict_ids=ids, expires_ts=expires
        )
        self._active[net] = block
        self._active.move_to_end(net)
        self._counters["extend"] += 1
        return decision

    def _block(self, base: Decision, net: IPNetwork, why: str, ttl_s: int | None) -> Decision:
        now = base.decided_ts
        if len(self._active) >= self.config.max_tracked:
            self._counters["table_full"] += 1
            why += (
                f"; {len(self._active)} blocks active (max_tracked): refused, "
                "the active blocks stay"
            )
            return replace(base, action="block", outcome="table_full", reason=why)
        limited = self._take_token(net, now)
        if limited:
            self._counters["rate_limited"] += 1
            why += f"; {limited}, not applied"
            return replace(base, action="block", outcome="rate_limited", reason=why)
        offences = self._offend(net, now)
        ttl, factor = self._ttl(offences) if ttl_s is None else (ttl_s, 1)
        why += f"; {_ordinal(offences)} offence, ttl {_times(factor)}"
        decision = replace(base, action="block", ttl_s=ttl, expires_ts=now + ttl, reason=why)
        decision = self._outcome(decision)
        self._remember(
            net,
            ActiveBlock(
                decision.addr,
                decision.prefix_len,
                why,
                base.family,
                base.final_score,
                base.verdict_ids,
                now,
                decision.expires_ts,
            ),
        )
        self._counters["block"] += 1
        return decision

    # --- unblocks ------------------------------------------------------------------

    def expire(self, now: float | None = None) -> list[Decision]:
        """Unblocks for blocks at or past their expiry; the policy forgets them. Call it
        about once a second."""
        now = self._clock() if now is None else now
        out = []
        for net in [n for n, b in self._active.items() if b.expires_ts <= now]:
            block = self._active.pop(net)
            out.append(self._unblock(block, now, f"expired (ttl {_ttl_text(block)})"))
        return out

    def unblock(self, addr: str) -> Decision | None:
        """An operator's unblock of ``addr`` (an address or a CIDR prefix); None when it
        is not blocked. Its offence history is forgotten too."""
        try:
            net = _normalize(ipaddress.ip_network(addr, strict=False), self.config)
        except ValueError as exc:
            raise ConfigError(
                f"{addr!r} is not an IP address or prefix: write 192.0.2.7 or 2001:db8::/64"
            ) from exc
        self._offenders.pop(net, None)
        block = self._active.pop(net, None)
        if block is None:
            return None
        return self._unblock(block, self._clock(), "unblocked by the operator")

    def flush(self) -> list[Decision]:
        """Unblocks for every active block (offence histories are kept)."""
        now = self._clock()
        out = [
            self._unblock(block, now, "flushed by the operator") for block in self._active.values()
        ]
        self._active.clear()
        return out

    def _unblock(self, block: ActiveBlock, now: float, why: str) -> Decision:
        self._counters["unblock"] += 1
        decision = Decision(
            "unblock",
            "pending",
            block.addr,
            block.prefix_len,
            0,
            0.0,
            why,
            block.family,
            block.final_score,
            block.verdict_ids,
            now,
        )
        return self._outcome(decision)

    # --- settings --------------------------------------------------------------------

    def reconfigure(self, config: FirewallConfig) -> tuple[list[str], list[Decision]]:
        """Take ``config``'s :data:`LIVE_SETTINGS`; its other fields are ignored (they
        apply at restart). Returns the names of the settings that changed and the
        unblocks of active blocks the new allowlist covers. Raises ConfigError, changing
        nothing, when the result is not a valid config."""
        live = {name: getattr(config, name) for name in LIVE_SETTINGS}
        new = replace(self.config, **live)
        new.check()
        changed = [n for n in LIVE_SETTINGS if getattr(new, n) != getattr(self.config, n)]
        if not changed:
            return [], []
        now = self._clock()
        # Tokens earned so far at the old rates; the new rates and bursts apply from now.
        old = self.config
        self._refill(self._global, now, old.max_new_blocks_per_s, old.new_blocks_burst)
        for bucket in self._buckets.values():
            self._refill(
                bucket, now, old.new_blocks_per_prefix_per_s, old.new_blocks_per_prefix_burst
            )
            bucket.tokens = min(bucket.tokens, float(new.new_blocks_per_prefix_burst))
        self.config = new
        self._global.tokens = min(self._global.tokens, float(new.new_blocks_burst))
        unblocks: list[Decision] = []
        if "allowlist" in changed:
            self.allowlist = self._build_allowlist(new)
            for net in [n for n in self._active if self.allowlist.covers(n)]:
                block = self._active.pop(net)
                unblocks.append(self._unblock(block, now, "allowlisted by config change"))
        return changed, unblocks

    def _build_allowlist(self, config: FirewallConfig) -> Allowlist:
        allowlist = Allowlist(config.allowlist)
        for entry in self._allowlist_extra:
            allowlist.add(entry)
        return allowlist

    # --- state -----------------------------------------------------------------------

    def restore(self, blocks: Iterable[ActiveBlock]) -> list[Decision]:
        """Take back blocks from the decision log after a restart. Expired ones are
        skipped; one whose remaining TTL is absurd is rejected (counted). Returns the
        rejections; the restored blocks are already in the backend's hands."""
        now = self._clock()
        rejected = []
        for block in blocks:
            if block.expires_ts <= now:
                continue
            remaining = block.expires_ts - now
            base = Decision(
                "reject",
                "rejected",
                block.addr,
                block.prefix_len,
                0,
                0.0,
                "",
                block.family,
                block.final_score,
                block.verdict_ids,
                now,
            )
            try:
                net = ipaddress.ip_network(block.network)
            except ValueError:
                rejected.append(self._reject(base, "bad_address", f"{block.network!r} in the log"))
                continue
            if remaining > self.config.max_ttl_s:
                why = f"restored block ends in {remaining:.0f}s > max_ttl_s"
                rejected.append(self._reject(base, "absurd_ttl", why))
                continue
            if net not in self._active and len(self._active) >= self.config.max_tracked:
                self._counters["table_full"] += 1
                continue
            self._remember(net, block)
            offender = self._offenders.get(net)
            if offender is None:
                self._offenders[net] = _Offender(1, block.since)
                self._bound(self._offenders, "evicted_offenders")
        return rejected

    def active(self) -> list[ActiveBlock]:
        """The active blocks, least recently blocked or extended first."""
        return list(self._active.values())

    def unverified_victims(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` destinations with the most skipped unverified verdicts (address,
        count), most first: where a flood of forged sources lands."""
        return sorted(self._victims.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def counters(self) -> dict[str, int]:
        """Counts of verdicts, decisions by kind, rejections by reason, refusals and
        evictions, plus the current sizes (``active``, ``offenders``)."""
        return {
            **self._counters,
            "active": len(self._active),
            "offenders": len(self._offenders),
            "unverified_victims": len(self._victims),
        }

    # --- helpers ---------------------------------------------------------------------

    def _reject(self, base: Decision, reason: str, detail: str) -> Decision:
        self._counters[f"rejected_{reason}"] += 1
        why = f"{reason}: {detail}"
        return replace(base, action="reject", outcome="rejected", reason=why, rejected=reason)

    def _outcome(self, decision: Decision) -> Decision:
        if self.config.dry_run:
            self._counters["dry_run"] += 1
            return replace(decision, outcome="dry_run")
        return decision

    def _ttl(self, offences: int) -> tuple[int, float]:
        """TTL in seconds for the nth offence, and its factor over ttl_base_s."""
        cfg = self.config
        exponent = min(offences - 1, 64)  # beyond any cap; keeps the power finite
        factor = cfg.ttl_growth**exponent
        ttl = min(cfg.ttl_base_s * factor, cfg.ttl_cap_s)
        return int(ttl), ttl / cfg.ttl_base_s

    def _offend(self, net: IPNetwork, now: float) -> int:
        offender = self._offenders.get(net)
        if offender is None or now - offender.last_ts > self.config.repeat_window_s:
            offender = _Offender(0, now)
        offender.offences += 1
        offender.last_ts = now
        self._offenders[net] = offender
        self._offenders.move_to_end(net)
        self._bound(self._offenders, "evicted_offenders")
        return offender.offences

    def _remember(self, net: IPNetwork, block: ActiveBlock) -> None:
        # Callers check max_tracked first: an active block is never evicted.
        self._active[net] = block
        self._active.move_to_end(net)

    def _bound(self, table: OrderedDict[IPNetwork, Any], counter: str) -> None:
        while len(table) > self.config.max_tracked:
            table.popitem(last=False)
            self._counters[counter] += 1

    @staticmethod
    def _refill(bucket: _Bucket, now: float, rate: float, burst: int) -> None:
        elapsed = max(0.0, now - bucket.refilled)
        bucket.refilled = max(bucket.refilled, now)
        bucket.tokens = min(float(burst), bucket.tokens + elapsed * rate)

    def _take_token(self, net: IPNetwork, now: float) -> str:
        """Take one new-block token from ``net``'s neighbourhood and from the global
        bucket; "" when both had one, else which limit was hit (nothing is taken)."""
        cfg = self.config
        hood = _neighbourhood(net, cfg)
        bucket = self._buckets.get(hood)
        if bucket is None:
            bucket = _Bucket(float(cfg.new_blocks_per_prefix_burst), now)
            self._buckets[hood] = bucket
            self._bound(self._buckets, "evicted_buckets")
        self._buckets.move_to_end(hood)
        self._refill(bucket, now, cfg.new_blocks_per_prefix_per_s, cfg.new_blocks_per_prefix_burst)
        self._refill(self._global, now, cfg.max_new_blocks_per_s, cfg.new_blocks_burst)
        if bucket.tokens < 1.0:
            return f"over {cfg.new_blocks_per_prefix_per_s:g} new blocks/s in {hood}"
        if self._global.tokens < 1.0:
            return f"over {cfg.max_new_blocks_per_s:g} new blocks/s"
        bucket.tokens -= 1.0
        self._global.tokens -= 1.0
        return ""


def _network(verdict: Verdict, config: FirewallConfig) -> tuple[IPNetwork | None, str]:
    """The prefix to block for ``verdict``'s source, or None and what is wrong."""
    raw = verdict.flow.src_addr
    version = verdict.flow.ip_version
    if (version, len(raw)) not in ((4, 4), (6, 16)):
        return None, f"src_addr of {len(raw)} bytes {raw.hex()!r} with ip_version {version}"
    addr = unmap(ipaddress.ip_address(raw))
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        return None, f"{addr} cannot be the source of an attack"
    return _normalize(ipaddress.ip_network(addr), config), ""


def _victim(verdict: Verdict) -> str:
    """The verdict's destination address as text ("?" when it is not an address)."""
    raw = verdict.flow.dst_addr
    if len(raw) not in (4, 16):
        return "?"
    return str(unmap(ipaddress.ip_address(raw)))


def _normalize(net: IPNetwork, config: FirewallConfig) -> IPNetwork:
    """``net`` unmapped and widened to the configured block prefix length."""
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        net = ipaddress.IPv4Network(
            (int(net.network_address.ipv4_mapped), max(net.prefixlen - 96, 0)), strict=False
        )
    limit = config.prefix_len_v4 if isinstance(net, ipaddress.IPv4Network) else config.prefix_len_v6
    if net.prefixlen > limit:
        net = net.supernet(new_prefix=limit)
    return net


def _neighbourhood(net: IPNetwork, config: FirewallConfig) -> IPNetwork:
    """The prefix whose new blocks share one token bucket (a /24 or /48 by default)."""
    limit = (
        config.rate_prefix_len_v4
        if isinstance(net, ipaddress.IPv4Network)
        else config.rate_prefix_len_v6
    )
    return net.supernet(new_prefix=limit) if net.prefixlen > limit else net


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _times(factor: float) -> str:
    return f"{factor:g}x"


def _ttl_text(block: ActiveBlock) -> str:
    return f"{block.expires_ts - block.since:.0f}s"
