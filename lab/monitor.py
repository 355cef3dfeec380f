"""What ``mld lab dev`` shows while the product runs in the lab, and its end-of-run summary.

:class:`PipelineMonitor` samples, every call of :meth:`sample`:

* each service's health counters from etcd (what ``mld status`` shows);
* new lines of the detector's alert log (EVE JSON): alerts per family, and the first
  alert seen for each source address, timed when read;
* new rows of the firewall's decision log (SQLite, read only): blocks and when they were
  decided, and verdicts not blocked because their source never completed a TCP handshake
  (outcome ``unverified``: a SYN scan or a SYN flood, whose packets anyone could forge,
  is detected and alerted but not blocked; firewall.block_unverified);
* the XDP blocklist (the pinned map): packets dropped per blocked prefix, and the first
  time each one's count grew.

:meth:`summary` joins those times with the scenario's ground truth: for each attack, when
it started, when it was first detected, blocked and dropped at the gateway; for the benign
hosts, how many of their recipe runs got everything they asked for (a recipe's evidence:
nginx answered, sshd logged the login...), and whether any benign address was blocked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from base.terminal import printable
from lab.recipes import GroundTruth

__all__ = ["AttackTimes", "PipelineMonitor", "render_summary", "render_view"]

# An attack's detection, block and drops are looked for until this long after it ended.
_AFTER_END_S = 5.0


def _host_of(prefix: str) -> str:
    """'203.0.113.66/32' -> '203.0.113.66' (a one-address prefix)."""
    net = ipaddress.ip_network(prefix, strict=False)
    return str(net.network_address)


@dataclass
class AttackTimes:
    """First times (wall clock, seconds since the epoch) seen for one address."""

    alerts: list[tuple[float, str]] = field(default_factory=list)  # (t, family)
    blocks: list[tuple[float, str]] = field(default_factory=list)  # (t decided, family)
    drops: list[tuple[float, int]] = field(default_factory=list)  # (t sampled, total drops)
    # (t decided, family) of verdicts not blocked: the source never completed a handshake.
    unverified: list[tuple[float, str]] = field(default_factory=list)


class PipelineMonitor:
    """Samples the running pipeline (module docstring)."""

    def __init__(
        self,
        status: Callable[[], list[dict[str, Any]]],
        eve_path: Path,
        decision_log: Path,
        pin_dir: Path,
    ) -> None:
        self._status = status
        self.eve_path = eve_path
        self.decision_log = decision_log
        self.pin_dir = pin_dir
        self.services: dict[str, dict[str, Any]] = {}
        self.alerts_by_family: Counter[str] = Counter()
        self.alerts_by_source: Counter[str] = Counter()
        self.alerts = 0
        self.addresses: dict[str, AttackTimes] = {}
        # Packets dropped per blocked prefix over the whole run (a block that expires and
        # comes back starts a new count in the map; these add them up).
        self.drops_by_prefix: dict[str, int] = {}
        self._current: dict[str, int] = {}
        self.decisions: list[dict[str, Any]] = []
        self.rates: dict[str, float] = {}
        self._eve: IO[str] | None = None
        self._eve_rest = ""
        self._last_decision = 0
        self._prev: tuple[float, dict[str, float]] | None = None
        self._blocklist: Any = None
        # Lab host name -> its address, for the live view's attack lines.
        self.host_addresses: dict[str, str] = {}

    def _times(self, addr: str) -> AttackTimes:
        return self.addresses.setdefault(addr, AttackTimes())

    # ---- sampling -------------------------------------------------------------------

    def sample(self, now: float | None = None, health: bool = True) -> None:
        now = time.time() if now is None else now
        if health:
            self._sample_health(now)
        self._sample_eve(now)
        self._sample_decisions()
        self._sample_blocklist(now)

    def _sample_health(self, now: float) -> None:
        found = {s["component"]: s for s in self._status()}
        if found:
            self.services = found
        totals = {
            "packets": float(self.counter("sniffer", "source.packets")),
            "flows": float(self.counter("sniffer", "pipeline.records")),
        }
        if self._prev is not None and now - self._prev[0] >= 0.5:
            dt = now - self._prev[0]
            self.rates = {k: max(0.0, (v - self._prev[1][k]) / dt) for k, v in totals.items()}
            self._prev = (now, totals)
        elif self._prev is None:
            self._prev = (now, totals)

    def counter(self, component: str, *names: str) -> int:
        """A health counter of a component (the first of ``names`` it has), 0 if none."""
        counters = self.services.get(component, {}).get("counters", {})
        for name in names:
            value = counters.get(name)
            if isinstance(value, int | float):
                return int(value)
        return 0

    def health(self, component: str) -> str:
        return printable(self.services.get(component, {}).get("health", "not registered"))

    def _sample_eve(self, now: float) -> None:
        if self._eve is None:
            try:
                self._eve = open(self.eve_path, encoding="utf-8")  # noqa: SIM115 (kept open)
            except OSError:
                return
        chunk = self._eve.read()
        if not chunk:
            return
        text = self._eve_rest + chunk
        lines = text.split("\n")
        self._eve_rest = lines.pop()  # a line not yet complete
        for line in lines:
            try:
                alert = json.loads(line)
            except ValueError:
                continue
            if alert.get("event_type") != "alert":
                continue  # the EVE log's stats (and flow) events
            meta = alert.get("alert", {}).get("metadata", {})
            family = printable((meta.get("ml_family") or ["?"])[0])
            self.alerts += 1
            self.alerts_by_family[family] += 1
            source = printable(alert.get("src_ip", ""))
            self.alerts_by_source[source] += 1
            times = self._times(source)
            # One entry per address and family per second at most: enough to time the
            # first alert of every attack, bounded by the length of the run.
            last = next((t for t, f in reversed(times.alerts) if f == family), None)
            if last is None or now - last >= 1.0:
                times.alerts.append((now, family))

    def _sample_decisions(self) -> None:
        if not self.decision_log.exists():
            return
        try:
            db = sqlite3.connect(f"file:{self.decision_log}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            return
        try:
            rows = db.execute(
                "SELECT id, ts, addr, prefix_len, action, family, outcome, final_score, ttl_s "
                "FROM decisions WHERE id > ? ORDER BY id",
                (self._last_decision,),
            ).fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            db.close()
        for row in rows:
            rid, ts, addr, plen, action, family, outcome, score, ttl = row
            self._last_decision = rid
            entry = {"ts": ts, "addr": addr, "prefix_len": plen, "action": action,
                     "family": family, "outcome": outcome, "final_score": score,
                     "ttl_s": ttl}  # fmt: skip
            self.decisions.append(entry)
            if action == "block" and outcome == "applied":
                self._times(addr).blocks.append((ts, family))
            elif outcome == "unverified":
                self._times(addr).unverified.append((ts, family))

    def _sample_blocklist(self, now: float) -> None:
        if self._blocklist is None:
            try:
                from xdp import Blocklist

                self._blocklist = Blocklist(self.pin_dir)
            except Exception:  # not pinned yet (the sniffer is starting): try again later
                return
        try:
            entries = self._blocklist.entries()
        except Exception:
            return
        seen = set()
        for entry in entries:
            seen.add(entry.prefix)
            before = self._current.get(entry.prefix, 0)
            if entry.drops == before:
                continue
            if entry.drops < before:  # the block expired and came back: a new count
                before = 0
            self._current[entry.prefix] = entry.drops
            self.drops_by_prefix[entry.prefix] = (
                self.drops_by_prefix.get(entry.prefix, 0) + entry.drops - before
            )
            self._times(_host_of(entry.prefix)).drops.append((now, entry.drops))
        for gone in set(self._current) - seen:  # expired and removed from the map
            del self._current[gone]

    def close(self) -> None:
        if self._eve is not None:
            self._eve.close()
        if self._blocklist is not None:
            with contextlib.suppress(Exception):
                self._blocklist.close()

    # ---- summary --------------------------------------------------------------------

    def dropped_total(self) -> int:
        return sum(self.drops_by_prefix.values())

    def summary(
        self,
        truths: Sequence[GroundTruth],
        benign_hosts: dict[str, list[str]],
        recipe_hosts: dict[str, str],
        t0: float,
        ended: float,
    ) -> dict[str, Any]:
        """Per attack: start, detected, blocked, dropped (seconds after its start); per
        benign host: recipe runs, runs with all their evidence, blocks on its addresses."""
        attacks = []
        for t in truths:
            if t.kind != "attack":
                continue
            hosts = [h for h in t.attack_hosts if h != "*"]
            # What happened to the attack's hosts from just before it started until a few
            # seconds after it ended (a later attack of the same host is its own).
            lo, hi = t.start - 1.0, t.end + _AFTER_END_S

            def first(
                pairs: Sequence[tuple[float, Any]], lo: float = lo, hi: float = hi
            ) -> float | None:
                found = [p[0] for p in pairs if lo <= p[0] <= hi]
                return min(found) if found else None

            def rel(x: float | None, start: float = t.start) -> float | None:
                return None if x is None else round(max(0.0, x - start), 2)

            alert = [first(self._times(h).alerts) for h in hosts]
            block = [first(self._times(h).blocks) for h in hosts]
            drop = [first(self._times(h).drops) for h in hosts]
            skipped = [first(self._times(h).unverified) for h in hosts]
            # No block decided during the attack, because one from an earlier attack of the
            # same host was still in force: its packets were dropped from the start.
            already = _min(block) is None and any(self._active_at(h, lo) for h in hosts)
            families = sorted({f for h in hosts for ts, f in self._times(h).alerts
                               if lo <= ts <= hi})  # fmt: skip
            attacks.append({
                "recipe": t.recipe,
                "family": t.family,
                "label": t.label,
                "attack_hosts": t.attack_hosts,
                "started_s": round(t.start - t0, 2),
                "duration_s": round(t.end - t.start, 2),
                # A block comes from a malicious verdict, which is an alert: the first alert
                # is read from the log every half second, the block time is exact.
                "detected_after_s": rel(_min([*alert, *block, *skipped])),
                "blocked_after_s": 0.0 if already else rel(_min(block)),
                "dropped_after_s": 0.0 if already else rel(_min(drop)),
                "already_blocked": bool(already),
                # Detected, not blocked: the source never completed a handshake (it may have
                # been forged), so the firewall did not block it.
                "not_blocked_unverified": _min(block) is None and _min(skipped) is not None,
                "alert_families": families,
                "spoofed": "*" in t.attack_hosts,
            })  # fmt: skip
        benign = {}
        last_end = max((t.end for t in truths), default=0.0)
        for host, addrs in benign_hosts.items():
            runs = [t for t in truths if t.kind == "benign" and recipe_hosts[t.recipe] == host]
            # A run the end of the scenario killed did not get to finish its requests.
            cut = [t for t in runs if t.timed_out and t.end >= last_end - 3.0]
            runs = [t for t in runs if t not in cut]
            ok = [t for t in runs if all(e["ok"] for e in t.evidence)]
            blocked = [d for d in self.decisions if d["action"] == "block"
                       and d["outcome"] == "applied" and d["addr"] in addrs]  # fmt: skip
            benign[host] = {
                "recipe_runs": len(runs),
                "runs_cut_at_end": len(cut),
                "runs_fully_answered": len(ok),
                "failed": sorted({t.recipe for t in runs if t not in ok}),
                "blocks": len(blocked),
                "alerts": sum(self.alerts_by_source[a] for a in addrs),
            }
        return {
            "duration_s": round(ended - t0, 1),
            "attacks": attacks,
            "benign": benign,
            "alerts": self.alerts,
            "alerts_by_family": dict(self.alerts_by_family),
            "blocks": sum(1 for d in self.decisions if d["action"] == "block"),
            "dropped_packets": self.dropped_total(),
            "dropped_by_prefix": dict(self.drops_by_prefix),
            "services": {
                name: {"health": s.get("health"), "counters": s.get("counters", {})}
                for name, s in self.services.items()
            },
        }

    def _active_at(self, addr: str, when: float) -> bool:
        for d in self.decisions:
            if d["addr"] == addr and d["action"] in ("block", "extend") and d["outcome"] in (
                "applied", "pending"
            ) and d["ts"] < when < d["ts"] + d["ttl_s"]:  # fmt: skip
                return True
        return False


def _min(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _fmt_after(value: float | None, already: bool = False, unverified: bool = False) -> str:
    if already:
        return "already"
    if unverified and value is None:
        return "unverified"
    return "-" if value is None else f"+{value:.1f} s"


def render_view(
    mon: PipelineMonitor,
    title: str,
    elapsed: float,
    duration: float,
    attacks_started: Sequence[tuple[str, str, float]],
    t0: float,
    events: Sequence[str],
) -> str:
    """The live screen: rates, flows, alerts per family, blocks, attack times so far."""
    pkts = mon.counter("sniffer", "source.packets")
    flows = mon.counter("sniffer", "pipeline.records")
    lines = [
        f"{title} — {elapsed:5.0f}/{duration:.0f} s   (Ctrl-C stops everything cleanly)",
        "",
        f"sniffer   {mon.health('sniffer'):10s} {pkts:>10,} packets "
        f"({mon.rates.get('packets', 0):,.0f}/s)   {flows:>8,} flows "
        f"({mon.rates.get('flows', 0):,.1f}/s)",
        f"detector  {mon.health('detector'):10s} {mon.counter('detector', 'records_in'):>10,} "
        f"flows scored   verdicts sent {mon.counter('detector', 'verdicts_out'):,}",
        f"firewall  {mon.health('firewall'):10s} {mon.counter('firewall', 'active_blocks'):>10,} "
        f"active blocks   {mon.dropped_total():,} packets dropped at XDP",
        f"rag       {mon.health('rag'):10s} {mon.counter('rag', 'stored'):>10,} "
        "events stored",
        "",
        "alerts    " + (", ".join(f"{f} {n:,}" for f, n in mon.alerts_by_family.most_common())
                        or "none yet"),
        "",
        f"{'attack':20s} {'from':16s} {'started':>9s} {'detected':>10s} {'blocked':>10s} "
        f"{'dropping':>10s}",
    ]  # fmt: skip
    for recipe, host, start in attacks_started:
        lines.append(_attack_line(mon, recipe, host, start, t0))
    if not attacks_started:
        lines.append("(no attack has started yet)")
    if events:
        lines += ["", "events:"] + [f"  {e}" for e in events[-5:]]
    return "\n".join(lines)


def _attack_line(mon: PipelineMonitor, recipe: str, host: str, start: float, t0: float) -> str:
    addr = mon.host_addresses.get(host, host)
    times = mon.addresses.get(addr, AttackTimes())

    def after(pairs: Sequence[tuple[float, Any]]) -> str:
        found = [p[0] for p in pairs if p[0] >= start - 1]
        return "-" if not found else f"+{max(0.0, min(found) - start):.1f} s"

    detected = after([*times.alerts, *times.blocks])
    return (
        f"{recipe:20s} {addr:16s} {'+' + format(start - t0, '.0f') + ' s':>9s} "
        f"{detected:>10s} {after(times.blocks):>10s} {after(times.drops):>10s}"
    )


def render_summary(summary: dict[str, Any]) -> str:
    """The end-of-run summary as text."""
    lines = [
        f"run of {summary['duration_s']:.0f} s: {summary['alerts']:,} alerts "
        f"({', '.join(f'{f} {n}' for f, n in summary['alerts_by_family'].items()) or 'none'}), "
        f"{summary['blocks']} blocks, {summary['dropped_packets']:,} packets dropped at the "
        "gateway",
        "",
        f"{'attack':20s} {'family':10s} {'from':16s} {'started':>8s} {'detected':>10s} "
        f"{'blocked':>10s} {'dropping':>10s}  alerted as",
    ]
    for a in summary["attacks"]:
        src = "spoofed" if a["spoofed"] else a["attack_hosts"][0]
        unverified = bool(a.get("not_blocked_unverified"))
        lines.append(
            f"{a['recipe']:20s} {a['family'] or '-':10s} {src:16s} "
            f"{'+' + format(a['started_s'], '.0f') + ' s':>8s} "
            f"{_fmt_after(a['detected_after_s']):>10s} "
            f"{_fmt_after(a['blocked_after_s'], a['already_blocked'], unverified):>10s} "
            f"{_fmt_after(a['dropped_after_s'], a['already_blocked']):>10s}  "
            f"{','.join(a['alert_families']) or '-'}"
        )
    if not summary["attacks"]:
        lines.append("(no attack ran)")
    if any(a.get("not_blocked_unverified") for a in summary["attacks"]):
        lines.append(
            'blocked "unverified": detected, not blocked: unverified source (it never '
            "completed a TCP handshake, so its packets may be forged; firewall.block_unverified)"
        )
    lines.append("")
    for host, b in summary["benign"].items():
        failed = f"; not fully answered: {', '.join(b['failed'])}" if b["failed"] else ""
        cut = f" ({b['runs_cut_at_end']} cut by the end of the run)" if b["runs_cut_at_end"] else ""
        lines.append(
            f"benign {host}: {b['runs_fully_answered']}/{b['recipe_runs']} recipe runs got "
            f"every answer{cut}, {b['blocks']} blocks, {b['alerts']} alerts{failed}"
        )
    return "\n".join(lines)
