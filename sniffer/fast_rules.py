"""The fast detector: a handful of threshold rules over each record and its context.

Each rule gives a record a score in [0, 1] that ramps linearly with one measured value
``x`` between two configured thresholds::

    score = clip((x - low) / (high - low), 0, 1)     0 at or below low, 1 at or above high

so a value just over ``low`` gives a low score rather than an alarm, and the thresholds
read as "starts to look odd" and "certainly odd". A record's fast_score is the highest rule
score and fast_rule names that rule ("" when every rule gave 0). A rule only scores the
records that take part in what it measures (a legitimate flow to a flooded server keeps 0).

Rules, the value x each measures over the context window (``window_s``), and the
records each scores:

* ``syn_flood``: SYN-only flows (SYN, no ACK from the initiator) toward the destination
  address, per second; scores SYN-only TCP flows.
* ``port_scan``: distinct destination ports on which the source *failed* (below) at the
  record's destination address; scores the source's flows to that address.
* ``host_sweep``: distinct destination addresses on which the source failed at the
  record's destination port (ICMP echo: one "port"), times the ramp of the share of the
  source's flows to that port that failed; scores the source's flows to that port.
* ``udp_flood``: UDP packets toward the destination address per second, or reflected flows
  toward the victim (below), whichever scores higher; scores UDP flows.
* ``dns_tunnel``: the lower of the ramps of mean name length and query rate, times the
* ``tiny_fragments``: tiny and overlapping IP fragments (FlowRecord.tiny_frag_count +
  overlap_frag_count) from the source; scores the flows that carry any. No ordinary stack
  sends them: they are how scans and attacks hide from filters and IDSs (``nmap -f``),
  so a few within the window are enough (a scan family rule).
  entropy ramp floored at 0.5 (SourceContext); scores flows with DNS queries.
* ``brute_force``: failed login attempts from the source to one login service (address
  and port) over ``brute_force_window_s``, by any tool: TCP flows to a login port in which
  the initiator sent at most ``brute_force_max_packets`` and that were refused or reset by
  the service, or completed the handshake and got at most ``brute_force_max_reply_bytes``
  of payload back (no session followed); and on the HTTP(S) ports, every request of a flow
  whose requests and replies are small (a 401/403 page or a login form again per request,
  the TLS handshake's certificates left out), a kept-alive session counting each request,
  over the context window (a rate: ``brute_force_http_low``/``_high``). The ramp of the
  attempts times the similarity of their reply sizes, ``1 - ramp(std/mean, spread_low,
  spread_high)`` over the window (a guesser gets the same refusal each time; a browser's
  replies vary); scores the attempts.
* ``beacon`` (family c2): answered connections (not failed) of the source to one service
  (address, port, protocol) at a steady rhythm over ``beacon_window_s``: the ramp of their
  count times the ramp of the regularity ``max(0, 1 - MAD/median)`` of the gaps between
  connection starts (RITA's beacon score works on a dispersion too; the median absolute
  deviation stays steady under a jitter of +-30% and a missed check-in), times the ramp
  of the same regularity of their payload sizes (an implant's check-ins are alike, a few
  tasked ones aside; a poller whose replies vary is no beacon); 0 when the median
  gap is under ``beacon_min_period_s`` (floods and retries); ports that poll by design
  (``beacon_ignore_ports``: NTP, DNS, ...) are never scored, nor brute_force's failed
  logins (a guessing script that sleeps between attempts keeps a clock); scores the
  pair's flows.
  Benign pollers that keep a clock (monitoring, update checks every minute) score like
  beacons: the rule alerts, and by default the c2 family's fast rule alone never blocks
  (``detector.thresholds.fast_rule_alone_blocks``).

* ``fingerprint`` (family scan): distinct odd probes of the source, each counted once per
  (kind, destination address, destination port) (:func:`odd_probes`, :data:`PROBE_KINDS`):
  TCP NULL, FIN-only, Xmas and SYN+FIN probes, a SYN whose SYN-ACK got a bare RST (a raw
  SYN probe: the scanner's kernel resets a handshake it did not start), a handshake reset
  by the initiator with no data either way (a connect probe, nmap -sT and its host
  discovery), ICMP timestamp, information and address-mask requests, echo requests with a
  non-zero code, a lone data-less ACK from an ephemeral port to a lower port that was
  reset (an ACK probe; from a service port to a higher one it is a server's late segment
  after its client reset, which nDPI's captures hold). No ordinary stack sends these, so
  a few are enough whatever the ports: service and OS fingerprinting of one port is
  caught, not only sweeps. Scores every flow
  of the source (its service probes look ordinary one by one) and the replies toward it
  (a TCP flow without SYN that it reset or left unanswered, an ICMP error).
* ``reflection`` (family ddos): unsolicited replies toward a victim (the flow's responder;
  :func:`unsolicited_replies`): TCP flows whose initiator sent only SYN-ACKs (no SYN came
  from the victim: SYNs with its address spoofed were reflected), unanswered UDP from a
  reflection port, unanswered UDP non-first fragments (the engine keys them with ports 0:
  the rest of an amplified answer); multicast and broadcast destinations are announcements,
  not replies. x is the higher ramp of the distinct reflectors and of the unsolicited
  packets toward the victim; scores those flows and the victim's other unanswered inbound
  TCP/UDP flows (the flood's noise: a one-way capture of a victim sees nothing else).

Failures, not counts. A flow *failed* (:func:`failed_flows`) when it is a TCP flow that
carried no payload either way and was refused (RST from the responder), unanswered or
closed straight after the handshake (a SYN scan's half-open probe, a NULL/FIN/Xmas probe,
a connect scan); a TCP flow reset by the responder before it sent any payload; a UDP
flow that got no answer; or an ICMP/ICMPv6 echo request without a reply. A client that
talks to many hosts that answer (a browser behind NAT, a peer-to-peer node) fails rarely,
so the scan rules stay quiet for it; a scanner's probes are mostly failures.

Reflection (amplification): a UDP flow whose *initiator* port is a reflection service port
(DNS 53, NTP 123, SSDP 1900, memcached 11211, ...) is a response nobody on this side asked
for (the victim's address was spoofed in the requests); one whose responder port is such a
port and whose responder sent at least ``amplification_ratio`` times the requester's bytes
is an amplified answer, and its victim is the initiator. Either counts as one reflected
flow toward its victim.

The destination-keyed windows live here (SourceContext only has the source's view) and
use the same record-time windows and caps as the source context. By default every window
runs in native code a batch at a time: the counting windows in ``BatchWindows``, the
failure windows (port_scan, host_sweep) and rhythm windows (beacon) in ``RuleWindows``
(sniffer/batch_windows.py, native/fastwin.c). ``native=False`` runs the per-record Python
below (``_windows_per_record``, ``_failures``, ``_rhythm``), the definition the tests
compare the native windows with.

Interim records (issue 18; ``sniffer/interim.py``): given the records' ``previous``, a
flow adds to the windows once for what it is (a SYN-only flow, a login attempt) at its
first record, and only the growth of its counters (UDP packets, tiny and overlapping
fragments) at later ones, as in the source context.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from sniffer.batch_windows import (
    ADDRESS_KEY_SIZE,
    BatchWindows,
    RuleWindows,
    RuleWindowsPart,
    address_keys,
    int_values,
)
from sniffer.config import ContextConfig, FastRulesConfig
from sniffer.interim import Previous
from sniffer.records import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Array, FlowColumns
from sniffer.sliding_window import SlidingWindows

__all__ = [
    "PROBE_KINDS",
    "RULES",
    "FastRules",
    "FastScores",
    "failed_flows",
    "odd_probes",
    "ramp",
    "unsolicited_replies",
]

RULES = (
    "syn_flood",
    "port_scan",
    "host_sweep",
    "udp_flood",
    "dns_tunnel",
    "brute_force",
    "tiny_fragments",
    "beacon",
    "fingerprint",
    "reflection",
)
# brute_force's window key: source, destination, port as int64.
_LOGIN_KEY = 2 * ADDRESS_KEY_SIZE + 8
# ICMP echo requests (v4 type 8, v6 type 128): src_port holds the ICMP type (records.py).
_ECHO_REQUESTS = (8, 128)

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class SmallInts:
    """Membership in a fixed set of integers, for columns of ports and ICMP types: the
    booleans of ``np.isin(x, values)`` by one table look-up. ``np.isin`` sorts, or builds
    its table again, on every call (1,688 calls and 0.31 s of CPU over the 1M-packet bench
    capture); this table is built once. Values outside 0..65535 in the set, or columns
    that are not integers, go to ``np.isin``."""

    _SIZE = 65536

    def __init__(self, values: Iterable[int]) -> None:
        self.values = np.unique(np.asarray(list(values), dtype=np.int64))
        self._table: Bools | None = None
        if len(self.values) == 0 or (self.values[0] >= 0 and self.values[-1] < self._SIZE):
            table = np.zeros(self._SIZE + 1, dtype=bool)  # the last entry stays False
            table[self.values] = True
            self._table = table

    def __call__(self, x: npt.ArrayLike) -> Bools:
        a = np.asarray(x)
        if self._table is None or a.dtype.kind not in "iu" or a.dtype == np.uint64:
            return np.isin(a, self.values)
        # Past the end (and, clipped, negatives): the last entry, False; negatives to 0.
        out: Bools = np.take(self._table, a, mode="clip")
        if a.dtype.kind == "i":
            out &= a >= 0
        return out


_ECHO_REQUEST = SmallInts(_ECHO_REQUESTS)

# fingerprint's probe kinds (odd_probes gives their index + 1; 0: not a probe).
PROBE_KINDS = (
    "null",  # TCP, no flag at all
    "fin",  # TCP FIN without SYN/ACK/RST (FIN-only; a stack's FIN always carries ACK)
    "xmas",  # TCP FIN+PSH+URG without SYN/ACK
    "syn_fin",  # TCP SYN and FIN, never an ACK
    "raw_syn",  # SYN answered by SYN-ACK, then a bare RST (no ACK): a raw-socket SYN probe
    "connect_reset",  # handshake done, no data either way, reset by the initiator
    "icmp_query",  # ICMP timestamp (13), information (15) or address-mask (17) request
    "echo_code",  # ICMP/ICMPv6 echo request with a non-zero code
    "ack_probe",  # one data-less ACK from an ephemeral port to a lower one, reset (nmap -sA)
)
# ICMPv4 requests no ordinary host sends: timestamp, information, address mask.
_ICMP_QUERIES = (13, 15, 17)
# ICMP errors (v4 unreachable 3, time exceeded 11; v6 unreachable 1, time exceeded 3):
# answers toward a prober.
_ICMP4_ERRORS = (3, 11)
_ICMP6_ERRORS = (1, 3)
_ICMP_QUERY = SmallInts(_ICMP_QUERIES)
_ICMP4_ERROR = SmallInts(_ICMP4_ERRORS)
_ICMP6_ERROR = SmallInts(_ICMP6_ERRORS)
# The fingerprint window's distinct value: the kind in the port's upper bits.
_KIND_SHIFT = 17


def _key_hash(keys: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each address key (batch_windows.address_keys rows), for the
    prober set: equal keys hash alike, so a prober is never missed; two keys that
    collide only make a record read its own (exact-keyed) window for nothing."""
    words = np.ascontiguousarray(keys[:, 1:ADDRESS_KEY_SIZE]).view("<u8")
    with np.errstate(over="ignore"):
        h = words[:, 0] * np.uint64(0x9E3779B97F4A7C15)
        h ^= words[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
        h += keys[:, 0].astype(np.uint64)
    result: npt.NDArray[np.uint64] = h
    return result


def ramp(x: npt.ArrayLike, low: float, high: float) -> Floats:
    """0 at or below ``low``, 1 at or above ``high``, linear between."""
    if high <= low:
        raise ValueError(f"a ramp needs low < high, got {low} and {high}")
    return np.clip((np.asarray(x, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


def failed_flows(flows: FlowColumns) -> npt.NDArray[np.bool_]:
    """Which flows failed: refused, reset, unanswered or data-less probes (module doc)."""
    proto = flows["protocol"]
    tcp = proto == PROTO_TCP
    fwd_payload = flows["fwd_payload_bytes"]
    bwd_payload = flows["bwd_payload_bytes"]
    bwd_packets = flows["bwd_packets"]
    refused = flows["bwd_rst_count"] > 0
    no_data = (fwd_payload == 0) & (bwd_payload == 0)
    probe = no_data & (refused | (bwd_packets == 0) | (flows["fwd_syn_count"] > 0))
    reset_early = refused & (bwd_payload == 0)
    tcp_failed = tcp & (probe | reset_early)
    udp_failed = (proto == PROTO_UDP) & (bwd_packets == 0)
    icmp = (proto == PROTO_ICMP) | (proto == PROTO_ICMPV6)
    echo_failed = icmp & _ECHO_REQUEST(flows["src_port"]) & (bwd_packets == 0)
    result: npt.NDArray[np.bool_] = tcp_failed | udp_failed | echo_failed
    return result


def odd_probes(flows: FlowColumns) -> npt.NDArray[np.int64]:
    """Per flow: the index + 1 in :data:`PROBE_KINDS` of the odd probe it is, 0 for none.

    From the initiator's per-flow flag counts: a normal connection's SYN has no FIN, its
    FIN always comes with an ACK, and a client that got a SYN-ACK acknowledges it (a bare
    RST is what the scanner's kernel sends for a SYN it did not make itself). A lone ACK
    that the far end resets is a probe only from an ephemeral port to a lower port."""
    proto = flows["protocol"]
    # A fragmented TCP flow's flags may be in fragments the engine does not parse (a
    # non-first fragment has no header; nmap -f cuts the first one before the flags):
    # tiny_fragments scores those, this takes only flows seen whole.
    tcp = (proto == PROTO_TCP) & (flows["frag_count"] == 0)

    def count(name: str) -> npt.NDArray[np.int64]:
        return flows[name].astype(np.int64)

    syn, fin, rst = count("fwd_syn_count"), count("fwd_fin_count"), count("fwd_rst_count")
    psh, ack, urg = count("fwd_psh_count"), count("fwd_ack_count"), count("fwd_urg_count")
    no_data = (count("fwd_payload_bytes") == 0) & (count("bwd_payload_bytes") == 0)
    answered_syn = count("bwd_syn_count") > 0
    icmp4 = proto == PROTO_ICMP
    icmp = icmp4 | (proto == PROTO_ICMPV6)
    itype, icode = count("src_port"), count("dst_port")
    kinds = (
        tcp & (syn + fin + rst + psh + ack + urg == 0) & (count("fwd_packets") > 0),
        tcp & (fin > 0) & (syn + ack + rst + psh + urg == 0),
        tcp & (fin > 0) & (psh > 0) & (urg > 0) & (syn + ack == 0),
        tcp & (syn > 0) & (fin > 0) & (ack == 0),
        tcp & (syn > 0) & (ack == 0) & (rst > 0) & answered_syn,
        tcp & (syn > 0) & (ack > 0) & (rst > 0) & answered_syn & no_data,
        icmp4 & _ICMP_QUERY(itype),
        icmp & _ECHO_REQUEST(itype) & (icode != 0),
        # A server's pure ACKs after its client reset (late segments) come from the
        # service port to the client's higher ephemeral port: not counted.
        tcp
        & (count("fwd_packets") == 1)
        & (ack > 0)
        & (syn + fin + rst + psh + urg == 0)
        & no_data
        & (count("bwd_rst_count") > 0)
        & (count("src_port") > count("dst_port")),
    )
    # The first kind that matches (Xmas is also FIN-only-like; the list order decides).
    out = np.zeros(len(flows), dtype=np.int64)
    for index in range(len(kinds) - 1, -1, -1):
        out[kinds[index]] = index + 1
    return out


def _not_multicast(addrs: list[bytes]) -> Bools:
    """Per address: not multicast (224.0.0.0/4, ff00::/8) and not an IPv4 address ending
    in .255 (a subnet broadcast): discovery protocols answer those by design."""
    keys = address_keys(addrs)
    v4 = keys[:, 0] == 4
    first = keys[:, 1]
    multicast = np.where(v4, (first >= 224) & (first <= 239), first == 0xFF)
    broadcast = v4 & ((keys[:, 4] == 255) | (first == 255))
    result: Bools = ~(multicast | broadcast)
    return result


def unsolicited_replies(flows: FlowColumns, amplification_ports: npt.ArrayLike) -> Bools:
    """Which flows are replies to requests the victim (the flow's responder) never sent:
    a TCP flow whose initiator sent only SYN-ACKs and got no SYN back (reflected SYNs
    with the victim's address spoofed), an unanswered UDP flow from a reflection port, or
    an unanswered UDP non-first fragment (ports 0: the rest of a large answer). Flows to
    multicast or broadcast addresses are announcements, not replies."""
    proto = flows["protocol"]
    fwd_packets = flows["fwd_packets"].astype(np.int64)
    unanswered = flows["bwd_packets"] == 0
    synack = (
        (proto == PROTO_TCP)
        & (fwd_packets > 0)
        & (flows["fwd_syn_count"] == fwd_packets)
        & (flows["fwd_ack_count"] == fwd_packets)
        & (flows["bwd_syn_count"] == 0)
        & (flows["fwd_payload_bytes"] == 0)
    )
    udp = (proto == PROTO_UDP) & unanswered
    from_reflector = udp & np.isin(flows["src_port"].astype(np.int64), amplification_ports)
    fragment = udp & (flows["src_port"] == 0) & (flows["dst_port"] == 0) & (flows["frag_count"] > 0)
    result: Bools = (synack | from_reflector | fragment) & _not_multicast(flows.dst_addr)
    return result


class FastScores:
    """Per-record rule scores: ``score`` (max over rules) and ``rule`` (its name or "")."""

    def __init__(self, per_rule: dict[str, Floats]) -> None:
        self.per_rule = per_rule
        stacked = np.stack([per_rule[r] for r in RULES])
        best = np.argmax(stacked, axis=0)
        self.score: Floats = stacked.max(axis=0) if len(best) else np.zeros(0)
        names = np.array(RULES, dtype=object)[best]
        self.rule: list[str] = np.where(self.score > 0, names, "").tolist()


class FastRules:
    """Scores records with the rules above; keeps per-destination windows and counters."""

    def __init__(
        self, rules: FastRulesConfig, context: ContextConfig, *, native: bool = True
    ) -> None:
        """``native``: the windows are native and fed a batch at a time
        (sniffer/batch_windows.py); false runs the per-record Python definition."""
        self.config = rules
        self._context = context
        self.window_s = context.window_s
        self.native = native
        # The failure and rhythm windows: native over whole batches (RuleWindows), or the
        # per-record Python definition below (the test oracle, native=False).
        self._rule_windows = (
            RuleWindows(
                window_s=context.window_s,
                max_keys=context.max_keys,
                max_entries_per_key=context.max_entries_per_key,
                max_entries=context.max_entries,
                beacon_window_s=rules.beacon_window_s,
                beacon_max_connections=rules.beacon_max_connections,
            )
            if native
            else None
        )
        self._py_last_start: dict[tuple[bytes, bytes, int, int], int] = {}
        self._py_pending: dict[Hashable, tuple[int, tuple[float, ...], tuple[Hashable, ...]]] = {}
        # Sources that failed at least once, most recent last (bounded by max_keys).
        self._py_failing_sources: OrderedDict[bytes, None] = OrderedDict()

        def windows(
            n_sums: int, key_size: int = ADDRESS_KEY_SIZE, window_s: float = context.window_s
        ) -> Any:
            caps: dict[str, Any] = {
                "window_s": window_s,
                "n_sums": n_sums,
                "n_distinct": 0,
                "max_keys": context.max_keys,
                "max_entries_per_key": context.max_entries_per_key,
                "max_entries": context.max_entries,
            }
            if native:
                return BatchWindows(**caps, key_size=key_size, value_size=1)
            return SlidingWindows(**caps)

        # Per destination address: SYN-only flows, UDP packets toward it.
        self._to_dst = windows(2)
        # Per victim address: reflected flows.
        self._reflected = windows(0)
        # Per source: tiny and overlapping fragments.
        self._evasive = windows(1)
        # Per (source, destination, port): failed attempts at a login service over
        # brute_force_window_s, and HTTP(S) attempts over window_s; each entry holds
        # (attempts, answered attempts, their reply bytes, their reply bytes^2), for the
        # spread of the replies.
        self._windows = windows
        self._logins = windows(4, _LOGIN_KEY, rules.brute_force_window_s)
        self._http_logins = windows(4, _LOGIN_KEY)
        # Per source: its odd probes, distinct by (kind, destination, port) (fingerprint);
        # per victim address: the reflectors that sent it unsolicited replies (reflection).
        # The reflectors' windows also sum the unsolicited packets.
        self._probes = self._distinct_windows(context, 2 * ADDRESS_KEY_SIZE, native, 0)
        self._reflectors = self._distinct_windows(context, ADDRESS_KEY_SIZE, native, 1)
        # Sources that sent an odd probe, and victims that got an unsolicited reply
        # (hashed address keys, most recent last; at most max_keys each): only their
        # records use the fingerprint and reflection windows, so ordinary traffic and a
        # spoofed flood's one-off sources never make a window.
        self._marked: dict[str, npt.NDArray[np.uint64]] = {
            "probers": np.zeros(0, dtype=np.uint64),
            "victims": np.zeros(0, dtype=np.uint64),
        }
        # Per (source, destination): the destination ports of failed flows (port_scan).
        self._py_pair_failures = SlidingWindows(
            window_s=context.window_s,
            n_sums=0,
            n_distinct=1,
            max_keys=context.max_keys,
            max_entries_per_key=context.max_entries_per_key,
            max_entries=context.max_entries,
        )
        # Per (source, destination port): failed flows (sum) and their destinations
        # (distinct; -1 stands for a flow that did not fail) (host_sweep).
        self._py_port_failures = SlidingWindows(
            window_s=context.window_s,
            n_sums=1,
            n_distinct=1,
            max_keys=context.max_keys,
            max_entries_per_key=context.max_entries_per_key,
            max_entries=context.max_entries,
        )
        # Per (source, destination, port, protocol): connection starts, for beacon. Each
        # entry holds (gap to the previous start in seconds, payload bytes both ways).
        self._py_beacons = self._beacon_windows(rules, context)
        self._set_ports(rules)
        # Records whose fast_rule was each rule, and records scored > 0 at all.
        self.fired: Counter[str] = Counter()
        self.scored = 0

    # The failure and rhythm state of whichever path runs, as sized containers (len, and
    # entries for window sets): what the memory bounds are checked on.
    def _part(self, name: str, python: Any) -> Any:
        return python if self._rule_windows is None else RuleWindowsPart(self._rule_windows, name)

    @property
    def _pending(self) -> Any:
        return self._part("pending", self._py_pending)

    @property
    def _last_start(self) -> Any:
        return self._part("last_starts", self._py_last_start)

    @property
    def _failing_sources(self) -> Any:
        return self._part("failing_sources", self._py_failing_sources)

    @property
    def _pair_failures(self) -> Any:
        return self._part("pairs", self._py_pair_failures)

    @property
    def _port_failures(self) -> Any:
        return self._part("ports", self._py_port_failures)

    @property
    def _beacons(self) -> Any:
        return self._part("beacons", self._py_beacons)

    @staticmethod
    def _distinct_windows(
        context: ContextConfig, value_size: int, native: bool, n_sums: int
    ) -> Any:
        """Windows per address keeping one distinct dimension of ``value_size`` bytes."""
        caps: dict[str, Any] = {
            "window_s": context.window_s,
            "n_sums": n_sums,
            "n_distinct": 1,
            "max_keys": context.max_keys,
            "max_entries_per_key": context.max_entries_per_key,
            "max_entries": context.max_entries,
        }
        if native:
            return BatchWindows(**caps, key_size=ADDRESS_KEY_SIZE, value_size=value_size)
        return SlidingWindows(**caps)

    @staticmethod
    def _beacon_windows(rules: FastRulesConfig, context: ContextConfig) -> SlidingWindows:
        return SlidingWindows(
            window_s=rules.beacon_window_s,
            n_sums=2,
            n_distinct=0,
            max_keys=context.max_keys,
            max_entries_per_key=rules.beacon_max_connections,
            max_entries=context.max_entries,
        )

    def _set_ports(self, rules: FastRulesConfig) -> None:
        self._beacon_ignore = np.array(sorted(rules.beacon_ignore_ports), dtype=np.int64)
        self._amp_ports = np.array(sorted(rules.amplification_ports), dtype=np.int64)
        self._login_ports = np.array(sorted(rules.brute_force_ports), dtype=np.int64)
        self._http_ports = np.array(sorted(rules.brute_force_http_ports), dtype=np.int64)
        self._command_ports = np.array(sorted(rules.brute_force_command_ports), dtype=np.int64)
        self._tls_ports = np.array(sorted(rules.brute_force_tls_ports), dtype=np.int64)
        self._is_beacon_ignore = SmallInts(self._beacon_ignore.tolist())
        self._is_amp = SmallInts(self._amp_ports.tolist())
        self._is_login = SmallInts(self._login_ports.tolist())
        self._is_http = SmallInts(self._http_ports.tolist())
        self._is_command = SmallInts(self._command_ports.tolist())
        self._is_tls = SmallInts(self._tls_ports.tolist())

    def reconfigure(self, rules: FastRulesConfig) -> None:
        """Score with ``rules`` from the next batch on (a change from etcd). The windows
        and counters stay: what a source did before the change still counts after it."""
        rules.check()
        if (rules.beacon_window_s, rules.beacon_max_connections) != (
            self.config.beacon_window_s,
            self.config.beacon_max_connections,
        ):
            # A new window length or depth starts the rhythm windows afresh.
            self._py_beacons = self._beacon_windows(rules, self._context)
            if self._rule_windows is not None:
                self._rule_windows.reset_beacons(
                    rules.beacon_window_s, rules.beacon_max_connections
                )
        if rules.brute_force_window_s != self.config.brute_force_window_s:
            # A new window length starts the login windows afresh.
            self._logins = self._windows(4, _LOGIN_KEY, rules.brute_force_window_s)
        self.config = rules
        self._set_ports(rules)

    def score(
        self, flows: FlowColumns, context: dict[str, Array], previous: Previous | None = None
    ) -> FastScores:
        """Scores of ``flows`` (in export order) given their SourceContext columns and what
        earlier records of the same flows counted (None: every record is a new flow)."""
        prev = previous if previous is not None else Previous.none(flows)
        first = prev.first
        c = self.config
        proto = flows["protocol"]
        src_port = flows["src_port"].astype(np.int64)
        dst_port = flows["dst_port"].astype(np.int64)
        fwd_bytes = flows["fwd_bytes"].astype(np.float64)
        bwd_bytes = flows["bwd_bytes"].astype(np.float64)
        tcp = proto == PROTO_TCP
        udp = proto == PROTO_UDP
        syn_only = tcp & (flows["fwd_syn_count"] > 0) & (flows["fwd_ack_count"] == 0)
        udp_packets = np.where(
            udp, flows["fwd_packets"].astype(np.float64) - prev.values["fwd_packets"], 0
        )
        unsolicited = udp & self._is_amp(src_port)
        amplified = (
            udp
            & self._is_amp(dst_port)
            & (bwd_bytes > 0)
            & (bwd_bytes >= c.amplification_ratio * fwd_bytes)
        )
        failed = failed_flows(flows)
        login, login_sums, http_login, http_sums = self._attempts(flows, prev)
        icmp = (proto == PROTO_ICMP) | (proto == PROTO_ICMPV6)
        # host_sweep's "port": the destination port; every ICMP flow shares -1.
        sweep_port = np.where(icmp, -1, dst_port)
        # A connection's start counts once, at its first record (an interim record of the
        # same flow would add a gap of 0).
        # A failed login at a login port is brute_force's, not a check-in: a guessing script
        # that sleeps a fixed time between attempts keeps a clock too.
        beacon_scored = ~self._is_beacon_ignore(dst_port) & ~icmp & ~failed & ~login & first
        beacon_size = (flows["fwd_payload_bytes"] + flows["bwd_payload_bytes"]).astype(np.float64)

        evasive = (flows["tiny_frag_count"] + flows["overlap_frag_count"]).astype(np.float64)
        evasive -= prev.values["tiny_frag_count"] + prev.values["overlap_frag_count"]
        # A flow adds itself (a SYN-only flow, a login attempt) at its first record only.
        windows = self._windows_batch if self.native else self._windows_per_record
        syn_rate, udp_rate, reflected, logins, http_logins, evasive_sum = windows(
            flows, dst_port, syn_only & first, udp_packets, unsolicited, amplified,
            login, login_sums, http_login, http_sums, evasive,
        )  # fmt: skip
        if self._rule_windows is not None:
            rw = self._rule_windows
            src, dst = flows.src_keys, flows.dst_keys
            ts, start = flows["last_ts_ns"], flows["first_ts_ns"]
            scan_ports, sweep_hosts, sweep_share = rw.failures(
                src, dst, dst_port, sweep_port, ts, failed
            )
            beacon_count, beacon_regularity, beacon_sizes = rw.rhythm(
                src, dst, dst_port, proto.astype(np.int64), start, beacon_size, beacon_scored,
                c.beacon_min_period_s, c.beacon_low,
            )  # fmt: skip
        else:
            scan_ports, sweep_hosts, sweep_share = self._failures(flows, failed, sweep_port)
            beacon_count, beacon_regularity, beacon_sizes = self._rhythm(
                flows, beacon_size, beacon_scored
            )

        dns = flows["dns_queries"] > 0
        # Entropy comes from one name per flow (the engine keeps only the first), so a
        # tunnel's short handshake name can hide its data names: it halves, never vetoes.
        dns_score = np.minimum(
            ramp(context["dns_qname_mean_len"], c.dns_len_low, c.dns_len_high),
            ramp(context["dns_query_rate"], c.dns_rate_low, c.dns_rate_high),
        ) * np.maximum(
            ramp(context["dns_qname_entropy"], c.dns_entropy_low, c.dns_entropy_high), 0.5
        )
        per_rule = {
            "syn_flood": np.where(syn_only, ramp(syn_rate, c.syn_flood_low, c.syn_flood_high), 0),
            "port_scan": ramp(scan_ports, c.port_scan_low, c.port_scan_high),
            "host_sweep": ramp(sweep_hosts, c.host_sweep_low, c.host_sweep_high)
            * ramp(sweep_share, c.host_sweep_failed_share_low, c.host_sweep_failed_share_high),
            "udp_flood": np.where(
                udp,
                np.maximum(
                    ramp(udp_rate, c.udp_flood_low, c.udp_flood_high),
                    ramp(reflected, c.amplification_low, c.amplification_high),
                ),
                0,
            ),
            "dns_tunnel": np.where(dns, dns_score, 0),
            "tiny_fragments": np.where(
                evasive > 0, ramp(evasive_sum, c.tiny_fragments_low, c.tiny_fragments_high), 0
            ),
            "brute_force": np.where(
                login, self._guessing(logins, c.brute_force_low, c.brute_force_high), 0
            )
            + np.where(
                http_login,
                self._guessing(http_logins, c.brute_force_http_low, c.brute_force_http_high),
                0,
            ),
            "beacon": np.where(
                beacon_scored,
                ramp(beacon_count, c.beacon_low, c.beacon_high)
                * ramp(beacon_regularity, c.beacon_regularity_low, c.beacon_regularity_high)
                * ramp(beacon_sizes, c.beacon_size_regularity_low, c.beacon_size_regularity_high),
                0,
            ),
        }
        per_rule["dns_tunnel"] = np.maximum(
            per_rule["dns_tunnel"], self._dns_domain(context, len(flows))
        )
        probes, reflectors, replies, reflection_scored = self._behaviour(flows, prev)
        per_rule["fingerprint"] = ramp(probes, c.fingerprint_low, c.fingerprint_high)
        per_rule["reflection"] = np.where(
            reflection_scored,
            np.maximum(
                ramp(reflectors, c.reflection_low, c.reflection_high),
                ramp(replies, c.reflection_packets_low, c.reflection_packets_high),
            ),
            0,
        )
        result = FastScores({k: v.astype(np.float64) for k, v in per_rule.items()})
        fired = Counter(result.rule)
        fired.pop("", None)
        self.fired.update(fired)
        self.scored += int(np.count_nonzero(result.score))
        return result

    def _attempts(
        self, flows: FlowColumns, prev: Previous
    ) -> tuple[npt.NDArray[np.bool_], Floats, npt.NDArray[np.bool_], Floats]:
        """brute_force's attempts (module doc): which records add a login attempt, which
        add HTTP(S) attempts, and each one's window entry (attempts, answered attempts,
        their reply bytes per answer, their squares). A session login attempt is a flow,
        added at its first record; a command-login record (FTP, POP3, IMAP) adds the
        passwords its flow tried since its previous record, an HTTP record the requests."""
        c = self.config
        dst_port = flows["dst_port"].astype(np.int64)
        tcp = flows["protocol"] == PROTO_TCP
        bwd_payload = flows["bwd_payload_bytes"].astype(np.float64)
        answered = (flows["bwd_packets"] > 0) & (flows["fwd_payload_bytes"] > 0)
        login_port = self._is_login(dst_port)
        v = prev.values
        requests = flows["fwd_psh_count"].astype(np.float64) - v["fwd_psh_count"]
        answers = flows["bwd_psh_count"].astype(np.float64) - v["bwd_psh_count"]
        sent = flows["fwd_payload_bytes"].astype(np.float64) - v["fwd_payload_bytes"]
        replied = bwd_payload - v["bwd_payload_bytes"]
        refused = prev.first & (flows["bwd_rst_count"] > 0)
        # Session logins: a flow is one attempt, added at its first record. Command logins
        # (FTP, POP3, IMAP: a line per command, a line back) may try many passwords in one
        # connection: each record adds its commands since the previous one, a password
        # taking two (USER and PASS), while the answers stay short lines.
        command = login_port & self._is_command(dst_port)
        session_login = (
            prev.first
            & tcp
            & login_port
            & ~command
            & (flows["fwd_packets"] <= c.brute_force_max_packets)
            & (refused | (answered & (bwd_payload <= c.brute_force_max_reply_bytes)))
        )
        command_login = (
            tcp
            & command
            & (
                refused
                | (
                    (requests > 0)
                    & (replied > 0)
                    & (replied <= c.brute_force_command_max_reply_bytes * np.maximum(answers, 1))
                )
            )
        )
        login = session_login | command_login
        tries = np.where(command_login, np.maximum(np.floor(requests / 2), 1.0), 1.0)
        # Reply size per answer: one attempt's refusal, however many a connection held.
        per_answer = np.where(command_login, replied, bwd_payload) / np.maximum(
            np.where(command_login, answers, flows["bwd_psh_count"]), 1
        )
        got = np.where(np.where(command_login, replied, bwd_payload) > 0, tries, 0.0)
        login_sums = np.column_stack([tries, got, got * per_answer, got * per_answer * per_answer])
        # TLS: the handshake's two client pushes (ClientHello, Finished) and the server's
        # certificates are no request and no reply (left out at the flow's first record).
        handshake = prev.first & self._is_tls(dst_port)
        requests = np.where(handshake, np.maximum(requests - 2, 1), requests)
        reply = np.where(
            handshake, np.maximum(replied - c.brute_force_tls_handshake_bytes, 0), replied
        )
        asked = np.maximum(requests, 1)
        http_login = (
            tcp
            & self._is_http(dst_port)
            & ~login_port
            & (requests > 0)
            & (replied > 0)
            & (reply <= c.brute_force_http_max_reply_bytes * asked)
            & (sent <= c.brute_force_http_max_request_bytes * asked)
            # One answer per request (a pushed response each): a real-time session that
            # streams many small client records (a video call's signalling) is no login.
            & (answers >= c.brute_force_http_min_answer_share * asked)
        )
        per = reply / asked
        http_sums = np.column_stack([requests, requests, requests * per, requests * per * per])
        return login, login_sums, http_login, http_sums

    def _guessing(self, sums: Floats, low: float, high: float) -> Floats:
        """brute_force's score from a login window's (attempts, answered attempts, sum of
        their replies, sum of their squared replies): the ramp of the attempts times the
        similarity of the replies."""
        attempts = sums[:, 0]
        answered = sums[:, 1]
        safe = np.where(answered > 0, answered, 1.0)
        mean = sums[:, 2] / safe
        var = np.maximum(sums[:, 3] / safe - mean * mean, 0.0)
        spread = np.where(mean > 0, np.sqrt(var) / np.where(mean > 0, mean, 1.0), 0.0)
        c = self.config
        similar = 1.0 - ramp(
            spread, c.brute_force_reply_spread_low, c.brute_force_reply_spread_high
        )
        result: Floats = ramp(attempts, low, high) * similar
        return result

    def _dns_domain(self, context: dict[str, Array], n: int) -> Floats:
        """dns_tunnel's second arm: the DNS window of the source's busiest registered
        domain (``dns_domain_*`` columns, sniffer/dns_windows.py; 0 without them). Many
        distinct subdomains under one domain, and names shaped to carry data: long
        high-entropy labels, or labels long enough for data in TXT/NULL/CNAME queries.
        What any tunnel tool must do, whatever its encoding; benign lookups repeat names
        or keep labels short. Scores the records whose flow sent queries; ``n`` records."""
        if "dns_domain_queries" not in context:
            return np.zeros(n)
        c = self.config
        label = context["dns_domain_max_label_len"]
        random_labels = ramp(label, c.dns_label_low, c.dns_label_high) * ramp(
            context["dns_domain_long_subdomain_entropy"],
            c.dns_data_entropy_low,
            c.dns_data_entropy_high,
        )
        data_types = ramp(
            context["dns_domain_data_type_share"],
            c.dns_data_type_share_low,
            c.dns_data_type_share_high,
        ) * ramp(label, c.dns_data_label_min, c.dns_label_low)
        volume = ramp(
            context["dns_domain_distinct_subdomains"], c.dns_subdomains_low, c.dns_subdomains_high
        )
        score: Floats = volume * np.maximum(random_labels, data_types)
        return np.where(context["dns_domain_queries"] > 0, score, 0.0)

    def _behaviour(
        self, flows: FlowColumns, prev: Previous
    ) -> tuple[Floats, Floats, Floats, Bools]:
        """fingerprint's and reflection's window values per record (0 where not scored):
        the source's distinct probes, the victim's distinct reflectors and unsolicited
        packets; and which records reflection scores.

        Only the records of marked keys take part (:meth:`_remember`): sources that sent
        an odd probe, victims that received an unsolicited reply (before, or earlier in
        this batch).

        fingerprint: each record adds to its source's window, a value (kind, destination,
        port) when it is an odd probe (:func:`odd_probes`), and reads the distinct count;
        then (a second pass over the batch) a possible reply toward a prober (a TCP flow
        without SYN that its responder reset or left unanswered, an ICMP error) also adds
        to the window of its destination, the prober, without a value, and takes the
        higher count (such a flow is a target's late segment after the scanner reset, or
        an ACK probe: either way part of the scan).

        reflection: an unsolicited reply (:func:`unsolicited_replies`) adds its initiator,
        the reflector, to its victim's (destination's) window; the victim's other
        unanswered inbound TCP/UDP flows add without a value; both read the count of
        distinct reflectors and the sum of unsolicited packets (a flow's growth since its
        previous record). Every record of a flow adds (repeats of a value count once), so
        an interim record's flow counts as soon as its counters show what it is."""
        proto = flows["protocol"]
        tcp = proto == PROTO_TCP
        kind = odd_probes(flows)
        # Segments without SYN that the responder reset or left unanswered (a target's
        # late segments after the scanner reset, or an ACK probe), ICMP errors.
        ended = (flows["bwd_rst_count"] > 0) | (flows["bwd_packets"] == 0)
        reply = (tcp & (flows["fwd_syn_count"] == 0) & ended & (kind == 0)) | (
            ((proto == PROTO_ICMP) & _ICMP4_ERROR(flows["src_port"]))
            | ((proto == PROTO_ICMPV6) & _ICMP6_ERROR(flows["src_port"]))
        )
        probe_value = (kind << _KIND_SHIFT) | flows["dst_port"].astype(np.int64)
        unsolicited = unsolicited_replies(flows, self._amp_ports)
        unanswered = (
            (tcp | (proto == PROTO_UDP))
            & (flows["bwd_packets"] == 0)
            & _not_multicast(flows.dst_addr)
        )
        dst = flows.dst_keys
        dst_h = _key_hash(dst)
        inbound = unsolicited | (unanswered & self._remember("victims", dst_h, unsolicited))
        replies = np.where(
            unsolicited,
            flows["fwd_packets"].astype(np.float64) - prev.values["fwd_packets"],
            0.0,
        )
        ts = flows["last_ts_ns"]
        src = flows.src_keys
        from_prober = self._remember("probers", _key_hash(src), kind > 0)
        to_prober = reply & np.isin(dst_h, self._marked["probers"])
        if self.native:
            value = np.concatenate([dst, int_values(probe_value, ADDRESS_KEY_SIZE)], axis=1)
            by_src = self._probes.add(
                src, ts, values=value[:, None, :], counted=(kind > 0)[:, None], select=from_prober
            ).distinct[:, 0]
            by_dst = self._probes.add(
                dst,
                ts,
                values=value[:, None, :],
                counted=np.zeros((len(flows), 1)),
                select=to_prober,
            ).distinct[:, 0]
            probes = np.maximum(by_src, by_dst)
            victims = self._reflectors.add(
                dst,
                ts,
                replies[:, None],
                values=src[:, None, :],
                counted=unsolicited[:, None],
                select=inbound,
            )
            reflectors = victims.distinct[:, 0].astype(np.float64)
            return probes.astype(np.float64), reflectors, victims.sums[:, 0], inbound
        n = len(flows)
        probes_py, reflectors_py, replies_py = np.zeros(n), np.zeros(n), np.zeros(n)
        rows = zip(
            flows.src_addr,
            flows.dst_addr,
            ts.tolist(),
            kind.tolist(),
            probe_value.tolist(),
            from_prober.tolist(),
            to_prober.tolist(),
            unsolicited.tolist(),
            inbound.tolist(),
            replies.tolist(),
            strict=True,
        )
        # None stands for an entry without a value (left out of the distinct count).
        replying = []
        for i, (src_a, dst_a, t, k, v, prober, rep, uns, inb, pk) in enumerate(rows):
            if prober:
                win = self._probes.add(src_a, t, (), ((dst_a, v) if k else None,))
                probes_py[i] = win.distinct_count(0) - (1 if None in win.distinct[0] else 0)
            if rep:
                replying.append((i, dst_a, t))
            if inb:
                rwin = self._reflectors.add(dst_a, t, (pk,), (src_a if uns else None,))
                reflectors_py[i] = rwin.distinct_count(0) - (1 if None in rwin.distinct[0] else 0)
                replies_py[i] = rwin.sums[0]
        # The replies read their prober's window after the whole batch's sources (as the
        # native path adds them: a second pass).
        for i, dst_a, t in replying:
            win = self._probes.add(dst_a, t, (), (None,))
            seen = win.distinct_count(0) - (1 if None in win.distinct[0] else 0)
            probes_py[i] = max(probes_py[i], seen)
        return probes_py, reflectors_py, replies_py, inbound

    def _remember(self, name: str, keys: npt.NDArray[np.uint64], mark: Bools) -> Bools:
        """Which records have a key (hashed address) marked in an earlier batch or earlier
        in this one (the marking record included); remembers this batch's marked keys in
        ``self._marked[name]`` (ordered by their first mark in it; past max_keys the least
        recently marked are forgotten)."""
        known = self._marked[name]
        result: Bools = np.isin(keys, known)
        rows = np.flatnonzero(mark)
        if len(rows):
            # This batch's marked keys, each from its first mark on (rows are in order).
            new, first = np.unique(keys[rows], return_index=True)
            first = rows[first]
            where = np.searchsorted(new, keys).clip(0, len(new) - 1)
            result |= (new[where] == keys) & (np.arange(len(keys)) >= first[where])
            new = new[np.argsort(first, kind="stable")]
            kept = known[~np.isin(known, new)]
            self._marked[name] = np.concatenate([kept, new])[-self._context.max_keys :]
        return result

    def _windows_per_record(
        self,
        flows: FlowColumns,
        dst_port: npt.NDArray[np.int64],
        syn_only: npt.NDArray[np.bool_],
        udp_packets: Floats,
        unsolicited: npt.NDArray[np.bool_],
        amplified: npt.NDArray[np.bool_],
        login: npt.NDArray[np.bool_],
        login_sums: Floats,
        http_login: npt.NDArray[np.bool_],
        http_sums: Floats,
        evasive: Floats,
    ) -> tuple[Floats, Floats, Floats, Floats, Floats, Floats]:
        """The destination windows' values per record, one record at a time (the
        definition; :meth:`_windows_batch` gives the same numbers)."""
        n = len(flows)
        syn_rate = np.zeros(n)
        udp_rate = np.zeros(n)
        reflected = np.zeros(n)
        logins = np.zeros((n, 4))
        http_logins = np.zeros((n, 4))
        evasive_sum = np.zeros(n)
        rate = 1.0 / self.window_s
        ts = flows["last_ts_ns"].tolist()
        rows = zip(
            flows.src_addr,
            flows.dst_addr,
            dst_port.tolist(),
            ts,
            syn_only.astype(np.float64).tolist(),
            udp_packets.tolist(),
            evasive.tolist(),
            strict=True,
        )
        for i, (src, dst, port, t, syn, pk, ev) in enumerate(rows):
            win = self._to_dst.add(dst, t, (syn, pk))
            syn_rate[i] = win.sums[0] * rate
            udp_rate[i] = win.sums[1] * rate
            if unsolicited[i] or amplified[i]:
                victim = dst if unsolicited[i] else src
                reflected[i] = self._reflected.add(victim, t).count
            if login[i]:
                logins[i] = self._logins.add((src, dst, port), t, tuple(login_sums[i])).sums
            if http_login[i]:
                got = self._http_logins.add((src, dst, port), t, tuple(http_sums[i]))
                http_logins[i] = got.sums
            if ev:
                evasive_sum[i] = self._evasive.add(src, t, (ev,)).sums[0]
        return syn_rate, udp_rate, reflected, logins, http_logins, evasive_sum

    def _windows_batch(
        self,
        flows: FlowColumns,
        dst_port: npt.NDArray[np.int64],
        syn_only: npt.NDArray[np.bool_],
        udp_packets: Floats,
        unsolicited: npt.NDArray[np.bool_],
        amplified: npt.NDArray[np.bool_],
        login: npt.NDArray[np.bool_],
        login_sums: Floats,
        http_login: npt.NDArray[np.bool_],
        http_sums: Floats,
        evasive: Floats,
    ) -> tuple[Floats, Floats, Floats, Floats, Floats, Floats]:
        """:meth:`_windows_per_record` over the whole batch in native windows (each window
        set is independent of the others, so each takes the batch in one call)."""
        rate = 1.0 / self.window_s
        ts = flows["last_ts_ns"]
        src, dst = flows.src_keys, flows.dst_keys
        to_dst = self._to_dst.add(
            dst, ts, np.column_stack([syn_only.astype(np.float64), udp_packets])
        )
        syn_rate = to_dst.sums[:, 0] * rate
        udp_rate = to_dst.sums[:, 1] * rate
        reflecting = unsolicited | amplified
        victim = np.where(unsolicited[:, None], dst, src)
        reflected = self._reflected.add(victim, ts, select=reflecting).count.astype(np.float64)
        login_keys = np.concatenate([src, dst, int_values(dst_port, 8)], axis=1)
        logins = self._logins.add(login_keys, ts, login_sums, select=login).sums
        http_logins = self._http_logins.add(login_keys, ts, http_sums, select=http_login).sums
        frag = self._evasive.add(src, ts, evasive[:, None], select=evasive > 0)
        evasive_sum = np.where(evasive > 0, frag.sums[:, 0], 0.0)
        return syn_rate, udp_rate, reflected, logins, http_logins, evasive_sum

    def _failures(
        self, flows: FlowColumns, failed: npt.NDArray[np.bool_], sweep_port: Array
    ) -> tuple[Floats, Floats, Floats]:
        """Per record: distinct failed ports at its (source, destination) (port_scan), and
        distinct failed destinations and the failed share at its (source, port)
        (host_sweep). A record that did not fail still reads its pair's counts, so every
        probe of a scan is scored, the answered ones too."""
        n = len(flows)
        scan_ports = np.zeros(n)
        sweep_hosts = np.zeros(n)
        share = np.zeros(n)
        pairs = self._py_pair_failures
        ports = self._py_port_failures
        # Only the flows that failed, or whose source failed before, have anything to
        # count or read: most traffic skips the loop below.
        failing = self._py_failing_sources
        src_addr = flows.src_addr
        bad_list = failed.tolist()
        for src, bad in zip(src_addr, bad_list, strict=True):
            if bad:
                failing[src] = None
                failing.move_to_end(src)
        while len(failing) > pairs.max_keys:
            failing.popitem(last=False)
        todo = [i for i, src in enumerate(src_addr) if src in failing]
        if not todo:
            return scan_ports, sweep_hosts, share
        dst_addr = flows.dst_addr
        dst_port = flows["dst_port"].tolist()
        sweep_list = sweep_port.tolist()
        ts = flows["last_ts_ns"].tolist()
        rows = (
            (i, src_addr[i], dst_addr[i], dst_port[i], sweep_list[i], ts[i], bad_list[i])
            for i in todo
        )
        pending = self._py_pending
        for i, src, dst, port, sport, t, bad in rows:
            key = (src, dst)
            if bad:
                if key in pairs or self._promote(
                    pending, ("pair", key), pairs, key, t, (), (port,)
                ):
                    scan_ports[i] = pairs.add(key, t, (), (port,)).distinct_count(0)
                else:
                    scan_ports[i] = 1
            else:
                seen = pairs.peek(key, t) if key in pairs else None
                scan_ports[i] = seen.distinct_count(0) if seen is not None else 0
            pkey = (src, sport)
            entry = ((1.0 if bad else 0.0,), (dst if bad else -1,))
            if pkey not in ports:
                if not bad and ("port", pkey) not in pending:
                    continue  # no failure at this port yet: nothing to score or keep
                if not self._promote(pending, ("port", pkey), ports, pkey, t, *entry):
                    sweep_hosts[i] = 1
                    share[i] = 1.0
                    continue
            pw = ports.add(pkey, t, *entry)
            sweep_hosts[i] = pw.distinct_count(0) - (1 if -1 in pw.distinct[0] else 0)
            share[i] = pw.sums[0] / pw.count if pw.count else 0.0
        return scan_ports, sweep_hosts, share

    def _forget_first_starts(self) -> dict[tuple[bytes, bytes, int, int], int]:
        """Forget the older half of the pairs' last starts (bounded memory under a flood of
        one-off pairs); pairs that have a window keep theirs. Amortised O(1) per flow."""
        last = self._py_last_start
        drop = len(last) // 2
        windows = self._py_beacons
        for k in list(itertools.islice(last, drop)):
            if k not in windows:
                del last[k]
        return last

    @staticmethod
    def _promote(
        pending: dict[Hashable, tuple[int, tuple[float, ...], tuple[Hashable, ...]]],
        tag: Hashable,
        windows: SlidingWindows,
        key: Hashable,
        ts: int,
        sums: tuple[float, ...],
        values: tuple[Hashable, ...],
    ) -> bool:
        """A key's first failure waits in ``pending`` (a tuple, not a window: a spoofed
        flood brings a new source with every packet). At its second entry the window is
        made with the first one in it and True returned: the caller then adds the entry."""
        first = pending.pop(tag, None)
        if first is None:
            pending[tag] = (ts, sums, values)
            if len(pending) > windows.max_keys:
                # Forget the older half of the one-off failures (a spoofed flood's
                # sources): amortised O(1) per flow.
                for k in list(itertools.islice(pending, len(pending) // 2)):
                    del pending[k]
            return False
        windows.add(key, *first)
        return True

    @staticmethod
    def _median(values: list[float]) -> float:
        """The middle value, or the mean of the two middle ones (as native/fastwin.c)."""
        v = sorted(values)
        n = len(v)
        return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0

    @classmethod
    def _steadiness(cls, values: list[float]) -> tuple[float, float]:
        """(1 - MAD/median floored at 0, the median); a median of 0 gives 1 when every
        value is 0, else 0. The median absolute deviation ignores a few outliers (a
        missed check-in, a retry) that would swamp a standard deviation, and a uniform
        jitter of +-30% of the period still reads 0.85."""
        med = cls._median(values)
        mad = cls._median([abs(x - med) for x in values])
        if med <= 0.0:
            return (1.0 if mad == 0.0 else 0.0), med
        return max(0.0, 1.0 - mad / med), med

    def _rhythm(
        self, flows: FlowColumns, size: Floats, scored: npt.NDArray[np.bool_]
    ) -> tuple[Floats, Floats, Floats]:
        """Per record: connections of its (source, destination, port, protocol) within
        beacon_window_s, the regularity of the gaps between their starts and that of
        their payload sizes (``_steadiness``; 0 up to beacon_low connections, where the
        score is 0 anyway, and with fewer than three). Records come in export order, not
        start order: a gap is taken to the latest start seen before, and a start earlier
        than that counts with a gap of 0 (it only lowers the regularity)."""
        n = len(flows)
        count = np.zeros(n)
        regularity = np.zeros(n)
        sizes = np.zeros(n)
        min_connections = self.config.beacon_low
        last = self._py_last_start
        windows = self._py_beacons
        min_period = self.config.beacon_min_period_s
        rows = zip(
            flows.src_addr,
            flows.dst_addr,
            flows["dst_port"].tolist(),
            flows["protocol"].tolist(),
            flows["first_ts_ns"].tolist(),
            size.tolist(),
            scored.tolist(),
            strict=True,
        )
        for i, (src, dst, port, proto, start, nbytes, ok) in enumerate(rows):
            if not ok:
                continue
            key = (src, dst, port, proto)
            prev = last.get(key)
            last[key] = start if prev is None else max(prev, start)
            if prev is None:
                # A first connection is only remembered by its start (most pairs never
                # connect again); the window begins with the second.
                count[i] = 1
                if len(last) > windows.max_keys:
                    last = self._forget_first_starts()
                continue
            gap = max(start - prev, 0) / 1e9
            if key not in windows:
                windows.add(key, prev, (0.0, 0.0))
            win = windows.add(key, start, (gap, nbytes))
            count[i] = win.count
            gaps = win.count - 1  # the oldest entry's gap reaches outside the window
            if gaps >= 2 and win.count > min_connections:
                kept = list(itertools.islice(win.entries, 1, None))
                steady, med = self._steadiness([e[1][0] for e in kept])
                if med >= min_period:
                    regularity[i] = steady
                    sizes[i] = self._steadiness([e[1][1] for e in kept])[0]
        return count, regularity, sizes
