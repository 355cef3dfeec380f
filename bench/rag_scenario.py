"""The RAG quality scenario: real captures on a fixed timeline in a fresh store.

Real shared captures (``../shared/data/pcaps``) go through the real offline detection
path (detector.analysis, what ``mld rag import`` runs) into a fresh RagStore, each
shifted to a fixed time of 2026-11-21 (UTC); questions (bench/rag_questions.py) are asked
at ``NOW`` (10:45)::

    06:00 masscan UDP 0-1000   172.31.15.102 -> 198.124.152.15   portscan
    07:00 nDPI firefox          192.168.1.178 -> 146.48.58.18     benign
    08:00 nDPI pinterest        IPv6 web                          benign
    08:30 nmap -p 80            10.87.1.10 <-> 130.211.223.103    portscan
    08:32 nmap service scan     10.87.1.10 <-> 130.211.223.103    portscan
    09:00 iodine DNS tunnel     10.0.2.30 <-> 10.0.2.20           dns_tunnel
    09:30 nDPI whatsapp         10.8.0.1                          benign
    10:00 masscan TCP 0-1000    172.31.15.102 -> 198.124.152.15   portscan
    10:10 nDPI chrome           192.168.1.178 -> 146.48.58.18     benign
    10:20 SYN flood             spoofed -> 10.10.10.10            syn_flood
    10:35 ISAKMP amplification  reflectors -> 10.10.10.10         amplification
    10:40 nDPI skinny           192.168.19x.x (VoIP)              benign

The firewall's decisions are there too: the real firewall policy (firewall/policy.py,
default settings, no automatic allowlist) decides on the verdict of every malicious event
in time order, on the events' clock, expiring blocks as time passes up to ``NOW``; its
decisions are stored as ``mld rag run`` stores what an agent sends (firewall/publish.py's
wire form, the blocks table).

**Ground truth** is the timeline and labels.csv, never the detector's output: a capture's
*relevant events* are its flows that its label rows (detector.labels: the row's scope, attack
hosts and, for ``window`` rows, targets, ports, protocol and time window on the capture's
own clock) make the attack, or every flow of a benign capture. Used by
bench/rag_quality.py and tests/rag; not part of the product.
"""

from __future__ import annotations

import calendar
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from base.errors import RagError
from config import MldConfig, load_config
from detector.analysis import scored_batches
from detector.families import BENIGN
from detector.labels import LabelRow, label_columns, read_labels
from detector.scoring import default_scorer
from firewall.config import FirewallConfig
from firewall.policy import Decision, Policy
from firewall.publish import NOT_PUBLISHED, to_block_decision
from rag.indexed_store import RagStore
from rag.store import EventStore, Filters

__all__ = [
    "DAY",
    "NOW",
    "TIMELINE",
    "Capture",
    "Scenario",
    "Truth",
    "build_scenario",
    "clock",
]

DAY = "2026-11-21"
NOW = "10:45"


@dataclass(frozen=True)
class Capture:
    """One capture of the timeline: imported so that its first flow starts at ``at``."""

    at: str  # HH:MM UTC on DAY
    pcap: str  # relative to <data>/pcaps
    max_flows: int | None = None  # keep the first N flows only (None: all)

    @property
    def name(self) -> str:
        return Path(self.pcap).name.split(".")[0]


TIMELINE: tuple[Capture, ...] = (
    Capture("06:00", "attacks/scan/masscan_udp_0_1000.pcap"),
    Capture("07:00", "ndpi/firefox.pcap"),
    Capture("08:00", "ndpi/pinterest.pcap"),
    Capture("08:30", "attacks/scan/nmap_80_vanilla.pcap"),
    Capture("08:32", "attacks/scan/nmap_80_service_detection.pcap"),
    Capture("09:00", "attacks/dns_tunnel/iodine_elastic.pcap"),
    Capture("09:30", "ndpi/whatsapp_voice_and_message.pcap"),
    Capture("10:00", "attacks/scan/masscan_tcp_0_1000.pcap"),
    Capture("10:10", "ndpi/chrome.pcap"),
    Capture("10:20", "attacks/ddos/syn_dominate_ecn_cwr.pcapng"),
    Capture("10:35", "attacks/ddos/amp_udp_isakmp.pcap"),
    Capture("10:40", "ndpi/skinny.pcap"),
)


def clock(hhmm: str, day: str = DAY) -> float:
    """Seconds since the epoch of ``hhmm`` (UTC) on ``day``."""
    return float(calendar.timegm(time.strptime(f"{day} {hhmm}", "%Y-%m-%d %H:%M")))


@dataclass(frozen=True)
class Truth:
    """The label of one capture (labels.csv; every nDPI capture used here is benign) and
    where its events are in the store.

    Its relevant events are ``ids`` when given (:func:`build_scenario` labels every flow
    with detector.labels, whatever the row's scope, ``window`` included); else the events
    ``first_id..last_id`` with an address of ``hosts`` at one end, all of them when
    ``hosts`` is empty (a hand-made store)."""

    family: str
    hosts: tuple[str, ...]  # attack hosts; empty: all flows are in scope
    first_id: int
    last_id: int
    ids: frozenset[int] | None = None


@dataclass
class Scenario:
    """The built store, where each capture's events are, and the grader's SQL."""

    db: Path
    now: float
    truths: dict[str, Truth] = field(default_factory=dict)
    build_s: float = 0.0

    def sql(self, query: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """The grader's own read-only queries over the ``events`` table."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return list(db.execute(query, list(params)))
        finally:
            db.close()

    def of(self, *names: str) -> frozenset[int]:
        """Ids of the events of these captures that their label makes the attack (every
        flow of a benign capture)."""
        ids: set[int] = set()
        for name in names:
            t = self.truths[name]
            if t.ids is not None:
                ids.update(t.ids)
                continue
            query = "SELECT id FROM events WHERE id BETWEEN ? AND ?"
            params: list[object] = [t.first_id, t.last_id]
            if t.hosts:
                marks = ",".join("?" * len(t.hosts))
                query += f" AND (src IN ({marks}) OR dst IN ({marks}))"
                params += [*t.hosts, *t.hosts]
            ids.update(int(str(i)) for (i,) in self.sql(query, params))
        return frozenset(ids)

    def window(self, since: float, until: float) -> frozenset[int]:
        rows = self.sql("SELECT id FROM events WHERE ts >= ? AND ts < ?", (since, until))
        return frozenset(int(str(i)) for (i,) in rows)


def _labels(data: Path) -> dict[str, list[LabelRow]]:
    """labels.csv's rows by capture (in file order: the first matching row wins)."""
    path = data / "labels.csv"
    if not path.is_file():
        raise RagError(f"no {path}: the quality scenario needs the shared captures")
    out: dict[str, list[LabelRow]] = {}
    for row in read_labels(path):
        out.setdefault(row.pcap, []).append(row)
    return out


def _hosts(rows: Sequence[LabelRow]) -> tuple[str, ...]:
    """The attack hosts of a capture's rows; empty when a row takes all flows."""
    hosts: list[str] = []
    for row in rows:
        if row.scope == "all_flows" or row.attack_hosts.strip() in ("", "*"):
            return ()
        hosts += [a for a in row.attack_hosts.split(";") if a and a not in hosts]
    return tuple(hosts)


def build_scenario(
    directory: Path,
    data: Path,
    cfg: MldConfig | None = None,
    *,
    timeline: Sequence[Capture] = TIMELINE,
    now: str = NOW,
    progress: Callable[[Capture, int], None] | None = None,
) -> Scenario:
    """Import ``timeline`` into a fresh store ``directory/events.sqlite``."""
    started = time.perf_counter()
    cfg = cfg or load_config()
    labels = _labels(data)
    db = directory / "events.sqlite"
    if db.exists():
        raise RagError(f"{db} exists: the scenario is built in an empty directory")
    scorer = default_scorer(cfg.detector)
    scenario = Scenario(db, clock(now))
    rag = RagStore(db, cfg.rag)
    try:
        for cap in timeline:
            path = data / "pcaps" / cap.pcap
            rows: list[LabelRow] = []
            if cap.pcap.startswith("ndpi/"):
                family = "benign"
            elif cap.pcap in labels:
                rows = labels[cap.pcap]
                family = rows[0].family
            else:
                raise RagError(f"{cap.pcap} has no row in labels.csv: no ground truth for it")
            events = []
            attack: list[bool] = []  # per event: its flow is the attack (rows only)
            for batch, got in scored_batches(
                [path], cfg.sniffer, scorer, sensor_id="quality", shift_to=clock(cap.at)
            ):
                events += got
                if rows:  # the batch's columns keep the capture's own times
                    families, _ = label_columns(rows, batch.flows)
                    attack += [f != BENIGN for f in families.tolist()]
            events, attack = events[: cap.max_flows], attack[: cap.max_flows]
            if not events:
                raise RagError(f"{path} gave no flows")
            ids = rag.ingest(events, "quality")
            relevant = (
                frozenset(i for i, hit in zip(ids, attack, strict=True) if hit)
                if rows
                else frozenset(ids)
            )
            scenario.truths[cap.name] = Truth(
                family, _hosts(rows), ids.start, ids.stop - 1, relevant
            )
            if progress is not None:
                progress(cap, len(events))
        rag.save()
        _decide(rag.store, scenario.now)
    finally:
        rag.close()
    scenario.build_s = time.perf_counter() - started
    return scenario


def _decide(store: EventStore, now: float) -> int:
    """The firewall policy's decisions on the malicious events, stored; returns how many."""
    clock = [0.0]
    # The scenario's scans and floods never complete a handshake (SYN scans, forged-source
    # floods), which the default policy alerts on but does not block (issue 19). The
    # scenario is of an operator who blocks them anyway, so that the store holds blocks,
    # expiries and refusals to ask about.
    policy = Policy(
        FirewallConfig(auto_allowlist=(), block_unverified=True), clock=lambda: clock[0]
    )
    wire = []

    def keep(decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if d.outcome not in NOT_PUBLISHED:
                outcome = "applied" if d.outcome == "pending" else d.outcome
                wire.append(
                    to_block_decision(
                        d, outcome, agent_id="fw-quality", seq=len(wire) + 1, backend="xdp"
                    )
                )

    def expire_until(ts: float) -> None:
        # Each block expires at its own time, not at the next event's.
        while due := [b.expires_ts for b in policy.active() if b.expires_ts <= ts]:
            clock[0] = min(due)
            keep(policy.expire(clock[0]))

    rows = store.rows(Filters(min_label=3), limit=10**7, order="ts, id")
    for row in rows:
        event = store.event(row.id)
        if event is None:
            continue
        expire_until(row.ts)
        clock[0] = row.ts
        keep([policy.decide(event.verdict)])
    expire_until(now)
    if wire:
        store.add_blocks(wire)
    return len(wire)
