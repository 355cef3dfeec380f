"""Typed settings of the sniffer (the ``sniffer`` section of mld.yaml).

Four parts, one per stage of the sniffer's pipeline: ``capture`` (flow engine and XDP),
``context`` (per-source sliding windows), ``rules`` (fast detector thresholds) and
``publish`` (where flow batches go). Every default is written, commented, in
config/mld.yaml; a test keeps the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

from base.errors import ConfigError

__all__ = [
    "CaptureConfig",
    "ContextConfig",
    "FastRulesConfig",
    "PublishConfig",
    "SnifferConfig",
]


@dataclass(frozen=True)
class CaptureConfig:
    # A flow with no packet for this long is exported (END_REASON_IDLE_TIMEOUT), in seconds.
    idle_timeout_s: float = 30.0
    # A flow older than this is exported and continues as a new record, in seconds (< 3600).
    active_timeout_s: float = 300.0
    # A flow that goes on is also exported as an interim record (FlowRecord.interim,
    # counters so far) this long after its start and after each interim record, in
    # seconds, so that a tunnel or a long session is scored within seconds rather than at
    # active_timeout_s; its final record still comes at the end. 0: final records only.
    interim_s: float = 5.0
    # Flows held at once; past it the oldest are exported early (END_REASON_EVICTED).
    max_flows: int = 262144
    # Offline engine: flow events handed over per batch.
    batch_size: int = 4096
    # XDP ring buffer size, in pages (a power of two).
    ringbuf_pages: int = 256
    # XDP attach mode: auto (native, falling back to generic), native or generic.
    xdp_mode: Literal["auto", "native", "generic"] = "auto"
    # How often the XDP flow table is swept for idle and old flows, in seconds.
    sweep_interval_s: float = 1.0
    # Longest wait for ring-buffer events in one poll, in milliseconds.
    poll_timeout_ms: int = 200
    # XDP: packets the parser cannot follow (truncated or malformed headers, an IP length
    # too short for its headers, more than 6 IPv6 extension headers): drop (they would
    # pass unseen by detection) or pass. Counted by reason either way (source.parse_*).
    parse_error_action: Literal["drop", "pass"] = "drop"
    # XDP: strict drops a packet whose source this host would not route back out of the
    # interface it arrived on, or not at all (a forged source, as strict rp_filter; counted
    # as source.rpf_dropped); none checks nothing. Needs forwarding on (a gateway), and
    # symmetric routes: with asymmetric ones leave it at none.
    reverse_path_check: Literal["none", "strict"] = "none"
    # Overload mode (XDP): when new flows come faster than the sniffer and the detector can
    # score them, the flows of sources that do not repeat (a forged-source flood) are
    # summarised per destination and per source prefix into flood records instead of
    # filling the flow table; flows already in it and sources that keep sending (a
    # scanner, a real client) keep the per-flow path (sniffer/README.md, "Overload").
    # Everything summarised or lost is counted (source.flows_summarised, source.evicted,
    # source.ringbuf_drops, source.lost_uncounted) and logged once per stats interval.
    overload: bool = True
    # New flows a second (counted per 100 ms) past which overload starts: about what one
    # sniffer and one detector score on a small machine (issue 20: 25-30k a second).
    overload_new_flows_per_s: float = 20000.0
    # Share of the ring buffer waiting to be read that starts overload (0: never).
    overload_ringbuf_fill: float = 0.5
    # Share of max_flows in use that starts overload, before the table evicts (0: never).
    overload_table_fill: float = 0.9
    # Overload lasts this long after its latest trigger, in seconds.
    overload_hold_s: float = 2.0
    # During overload a source's new flows get their own records again from its
    # (admit_after + 1)-th new flow on: forged random sources never repeat, a scanner does
    # at once. Only flows opened by a TCP SYN (or UDP, ICMP, ...) count; a new flow that
    # starts with a SYN-ACK, RST or ACK (a victim's replies to forged sources, a connection
    # already open) is summarised. 0: every new flow is summarised during overload.
    overload_admit_after: int = 1
    # Source prefix length of the per-source flood records, IPv4 and IPv6 (bits).
    flood_src_prefix4: int = 16
    flood_src_prefix6: int = 32
    # A source prefix becomes a flood record when it sent at least this many of the
    # summarised flows between two sweeps (a random-source flood puts a few in every
    # prefix; those are counted as source.flood_src_below_min, and are in the victim's).
    flood_src_min_flows: int = 100
    # Flood summaries held between two sweeps (a full map is counted: source.summary_lost).
    flood_max_summaries: int = 65536


@dataclass(frozen=True)
class ContextConfig:
    # Length of the per-source sliding window (SourceContext.window_s), in seconds.
    window_s: float = 60.0
    # Sources (and, for the fast rules, destinations) tracked at once; past it the one
    # updated least recently is forgotten.
    max_keys: int = 65536
    # Flows remembered per source within the window; past it the oldest are forgotten, so
    # counts under a heavier load are lower bounds.
    max_entries_per_key: int = 8192
    # Flows remembered over all sources; past it whole least recently updated sources are
    # forgotten. Bounds memory (about 200 bytes per flow).
    max_entries: int = 1000000
    # A source that completed a verified TCP handshake (it acknowledged the responder's
    # SYN-ACK, which a forged address never receives) counts as verified
    # (FlowRecord.src_verified) for this many seconds after that flow's last packet.
    verified_ttl_s: float = 600.0
    # Verified sources remembered at once (about 120 bytes each); past it the least
    # recently verified is forgotten until its next handshake.
    verified_max_sources: int = 65536
    # DNS query windows per (source, registered domain) for the dns_tunnel rule
    # (sniffer/dns_windows.py): the sniffer reads the DNS queries themselves from the
    # capture files, or live from the XDP interfaces through libpcap (root).
    dns_windows: bool = True
    # Length of a DNS window, in seconds (FlowRecord.dns_window).
    dns_window_s: float = 60.0
    # Sources kept at once, each with its 4 most recently queried registered domains;
    # past it the least recently seen source is forgotten (208 bytes each, allocated
    # at start).
    dns_max_sources: int = 16384
    # Queries kept over all sources (24 bytes each); past it the least recently seen
    # sources are forgotten. With the two caps the windows take at most about 10 MB.
    dns_max_entries: int = 262144
    # Queries kept per (source, domain): the newest ones; counts saturate there.
    dns_entries_per_domain: int = 64


@dataclass(frozen=True)
class FastRulesConfig:
    # Each rule's score ramps linearly from 0 at its *_low value to 1 at its *_high value.
    # syn_flood: SYN-only flows (SYN sent, no ACK) toward one destination, per second.
    syn_flood_low: float = 10.0
    syn_flood_high: float = 100.0
    # A flow *failed* when it carried no data either way and was refused (RST), unanswered
    # or closed straight after the handshake, or was an unanswered UDP flow or ICMP echo
    # (sniffer/fast_rules.py). port_scan and host_sweep count failed flows only, so a busy
    # client or a peer-to-peer node talking to many hosts that answer is not a scanner.
    # port_scan: distinct destination ports one source failed on at one destination
    # address within the window.
    port_scan_low: float = 16.0
    port_scan_high: float = 128.0
    # host_sweep: distinct destination addresses one source failed on at one destination
    # port (ICMP echo counts as one port) within the window ...
    host_sweep_low: float = 32.0
    host_sweep_high: float = 256.0
    # ... times a ramp of the share of that source's flows to that port that failed (a
    # peer-to-peer client whose peers mostly answer keeps a low share).
    host_sweep_failed_share_low: float = 0.5
    host_sweep_failed_share_high: float = 0.9
    # udp_flood: UDP packets toward one destination, per second.
    udp_flood_low: float = 1000.0
    udp_flood_high: float = 10000.0
    # amplification (reported as udp_flood): unsolicited or amplified responses from
    # reflection ports toward one destination within the window, in flows.
    amplification_low: float = 20.0
    amplification_high: float = 200.0
    # A response counts as amplified when the responder sent this many times the bytes
    # the requester sent.
    amplification_ratio: float = 10.0
    # UDP ports of known reflection services (CERT TA14-017A and later vectors).
    amplification_ports: tuple[int, ...] = (
        17, 19, 53, 69, 111, 123, 137, 161, 389, 500, 520, 1900, 3283, 3702,
        4500, 5353, 5683, 10001, 11211, 27015, 27960, 47808,
    )  # fmt: skip
    # dns_tunnel: mean query name length, in characters ...
    dns_len_low: float = 40.0
    dns_len_high: float = 100.0
    # ... DNS queries from the source per second ...
    dns_rate_low: float = 0.5
    dns_rate_high: float = 5.0
    # ... and mean name entropy, in bits per character.
    dns_entropy_low: float = 3.5
    dns_entropy_high: float = 4.5
    # dns_tunnel, its second arm, over the DNS window of the source's busiest registered
    # domain (FlowRecord.dns_window, sniffer/dns_windows.py): the ramp of its distinct
    # subdomains ...
    dns_subdomains_low: float = 8.0
    dns_subdomains_high: float = 24.0
    # ... times the higher of: the ramp of its longest label, in characters, times the
    # ramp of the entropy of its subdomains of 16 characters or more, in bits per
    # character (tunnels fill labels with encoded data) ...
    dns_label_low: float = 30.0
    dns_label_high: float = 52.0
    dns_data_entropy_low: float = 3.0
    dns_data_entropy_high: float = 3.8
    # ... and the ramp of its TXT/NULL/CNAME share of queries (the record types that carry
    # data back) times the ramp of its longest label from dns_data_label_min to dns_label_low.
    dns_data_type_share_low: float = 0.5
    dns_data_type_share_high: float = 0.9
    dns_data_label_min: float = 12.0
    # brute_force: failed login attempts from one source to one service (address and port)
    # within brute_force_window_s, whatever the tool. An attempt is a TCP flow to a login
    # port in which the initiator sent at most brute_force_max_packets; it failed when it
    # was refused or reset by the service, or the handshake completed and the service sent
    # back at most brute_force_max_reply_bytes of payload (a login that succeeds gets a
    # session: command output, host keys, a desktop; a rejected one gets a banner and a
    # refusal). The score is the ramp of the attempts times the similarity of their replies
    # (below): a guesser gets the same refusal again and again.
    brute_force_window_s: float = 300.0
    brute_force_low: float = 10.0
    brute_force_high: float = 40.0
    # A flow is short when the initiator sent at most this many packets.
    brute_force_max_packets: int = 64
    # Most payload bytes a service sends back on a failed login, in bytes.
    brute_force_max_reply_bytes: int = 3072
    # Login services watched for brute force (SMTP 25 and LDAP are left out: relays and
    # application pools open many short sessions with small replies).
    brute_force_ports: tuple[int, ...] = (
        21, 22, 23, 110, 139, 143, 445, 993, 995, 1433, 1521, 2222, 3306, 3389, 5432, 5900,
    )  # fmt: skip
    # Login ports whose protocol is a line per command and a line back (FTP, POP3, IMAP):
    # one connection may try many passwords, each counted (USER and PASS: two commands a
    # password), whatever the connection's length, while its answers average at most
    # brute_force_command_max_reply_bytes (the refusals; a listing or a mail is longer).
    brute_force_command_ports: tuple[int, ...] = (21, 110, 143)
    brute_force_command_max_reply_bytes: int = 256
    # The spread of the answered attempts' reply sizes per answer (server push) within
    # the window (standard deviation over mean; refused attempts are left out) from which
    # the score falls, and at which it is 0: a browser's replies vary, a refused
    # password's do not.
    brute_force_reply_spread_low: float = 0.25
    brute_force_reply_spread_high: float = 0.6
    # HTTP(S) authentication (basic auth, form POSTs): on these ports every request is an
    # attempt when its flow's replies are small (401/403 pages, a form again) and its
    # requests small (no upload), a kept-alive session counting each request. Counted over
    # the context window (window_s): a rate, so that an API client polling one server
    # about once a second stays under the alert (0.33 at 60 requests a minute).
    brute_force_http_ports: tuple[int, ...] = (80, 443, 8000, 8080, 8443, 8888)
    brute_force_http_low: float = 30.0
    brute_force_http_high: float = 120.0
    # Most reply and request payload per request, in bytes (a request is a segment the
    # client pushed, FlowRecord fwd.psh_count).
    brute_force_http_max_reply_bytes: int = 1024
    brute_force_http_max_request_bytes: int = 2048
    # Least share of requests that got an answer of their own (server pushes per client
    # push): a login answers every request; a video call's TLS signalling sent 77 client
    # records for 31 answers.
    brute_force_http_min_answer_share: float = 0.8
    # TLS ports among the HTTP ports: the handshake's server bytes (certificates) are
    # left out of the replies, up to this many bytes a flow.
    brute_force_tls_ports: tuple[int, ...] = (443, 8443)
    brute_force_tls_handshake_bytes: int = 6144
    # tiny_fragments: tiny and overlapping IP fragments from one source within the window
    # (no ordinary stack sends them; nmap -f does), in packets.
    tiny_fragments_low: float = 0.0
    tiny_fragments_high: float = 4.0
    # beacon (family c2): answered connections (not failed, above) of one source to one
    # service (address, port and protocol) at a steady rhythm, in the spirit of RITA's
    # beacon score. Over the last beacon_window_s, the gaps between the starts of the
    # pair's connections give a regularity 1 - (median absolute deviation of the gaps /
    # their median), floored at 0 (robust to jitter and to a missed check-in); their
    # payload sizes give a size regularity the same way. The score is the ramp of the
    # connection count times the ramp of the gap regularity times the ramp of the size
    # regularity (an implant's idle check-ins are alike, a few tasked ones aside).
    beacon_window_s: float = 3600.0
    # Connections kept per pair within the window; past it the oldest go first.
    beacon_max_connections: int = 64
    # Connections of the pair within the window (a check-in every 5 minutes alerts from
    # its 8th, 35 minutes in).
    beacon_low: float = 4.0
    beacon_high: float = 10.0
    # Shortest median gap between the connections that counts as a rhythm, in seconds:
    # faster repeats are floods, retries or scripted loops (a login loop with `sleep 1`
    # repeats every 1.2-2 s), not an implant that sleeps between check-ins.
    beacon_min_period_s: float = 2.5
    # Regularity of the gaps (1: a clock; a uniform jitter of +-30% of the period gives
    # about 0.85, +-50% 0.75; gaps drawn at random, exponential, about 0.3).
    beacon_regularity_low: float = 0.6
    beacon_regularity_high: float = 0.85
    # Regularity of the connections' payload sizes, the same measure (a clocked poller
    # whose replies vary, as in the nDPI captures, reads under 0.3).
    beacon_size_regularity_low: float = 0.3
    beacon_size_regularity_high: float = 0.7
    # Services that poll by design and are never scored (NTP, DNS, DHCP, mDNS, SSDP,
    # SNMP traps, syslog, LLMNR, NetBIOS, and the keepalives of STUN, IPsec NAT-T and SIP).
    beacon_ignore_ports: tuple[int, ...] = (
        53, 67, 68, 123, 137, 138, 162, 514, 1900, 3478, 4500, 5060, 5061, 5353, 5355,
    )  # fmt: skip
    # fingerprint (family scan): distinct odd probes one source sent within the window,
    # each counted once per (kind, destination address, destination port). The kinds are
    # packets no ordinary stack sends (sniffer/fast_rules.py): TCP NULL, FIN-only, Xmas
    # and SYN+FIN probes, a SYN whose SYN-ACK was answered by a bare RST (a raw SYN
    # probe), a handshake closed by the initiator's RST with no data either way (a
    # connect probe), a lone data-less ACK from an ephemeral port to a lower one that was
    # reset (an ACK probe), ICMP timestamp, address-mask and information requests, and
    # ICMP echo requests with a non-zero code. Scores every flow of the source, and the
    # replies toward it (flows without SYN it reset or left unanswered, ICMP errors).
    fingerprint_low: float = 1.0
    fingerprint_high: float = 3.0
    # reflection (family ddos): distinct reflectors that sent unsolicited replies to one
    # victim address within the window. An unsolicited reply is a TCP flow whose
    # initiator sent only SYN-ACKs (replies to SYNs the victim never sent), a UDP flow
    # from a reflection port (amplification_ports) or a UDP non-first fragment (no
    # ports: the rest of a large answer) toward the victim that it did not answer
    # (multicast and broadcast destinations left out). Scores those flows and the
    # victim's other unanswered inbound flows.
    reflection_low: float = 4.0
    reflection_high: float = 16.0
    # ... or, whichever scores higher, the unsolicited packets toward the victim within
    # the window (a few reflectors retransmitting SYN-ACKs to a victim that never asked).
    reflection_packets_low: float = 10.0
    reflection_packets_high: float = 40.0

    def check(self) -> None:
        """Raise ConfigError for thresholds the rules cannot score with, naming the keys
        (the file, ``mld sniffer run`` at start and every change from etcd go through this)."""
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and (math.isnan(value) or value < 0):
                problems.append(f"{f.name} is {value}, expected a number >= 0")
            if f.name.endswith("_low"):
                high_name = f.name.removesuffix("_low") + "_high"
                high = getattr(self, high_name)
                if not value < high:
                    problems.append(f"{f.name} ({value}) must be below {high_name} ({high})")
        if not self.amplification_ratio > 0:
            problems.append(f"amplification_ratio is {self.amplification_ratio}, expected > 0")
        if not self.dns_data_label_min < self.dns_label_low:
            problems.append(
                f"dns_data_label_min ({self.dns_data_label_min}) must be below dns_label_low "
                f"({self.dns_label_low})"
            )
        for name in (
            "host_sweep_failed_share_low",
            "host_sweep_failed_share_high",
            "dns_data_type_share_low",
            "dns_data_type_share_high",
            "brute_force_http_min_answer_share",
        ):
            if getattr(self, name) > 1:
                problems.append(f"{name} is {getattr(self, name)}, expected a share in [0, 1]")
        if not self.beacon_window_s > 0:
            problems.append(f"beacon_window_s is {self.beacon_window_s}, expected > 0")
        if self.beacon_max_connections < 3:
            problems.append(
                f"beacon_max_connections is {self.beacon_max_connections}, expected >= 3"
            )
        if self.brute_force_max_reply_bytes < 0:
            problems.append(
                f"brute_force_max_reply_bytes is {self.brute_force_max_reply_bytes}, expected >= 0"
            )
        if self.brute_force_max_packets < 1:
            problems.append(
                f"brute_force_max_packets is {self.brute_force_max_packets}, expected >= 1"
            )
        if not self.brute_force_window_s > 0:
            problems.append(f"brute_force_window_s is {self.brute_force_window_s}, expected > 0")
        for name in (
            "brute_force_http_max_reply_bytes",
            "brute_force_http_max_request_bytes",
            "brute_force_tls_handshake_bytes",
            "brute_force_command_max_reply_bytes",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} is {getattr(self, name)}, expected >= 0")
        for name in (
            "amplification_ports",
            "brute_force_ports",
            "brute_force_http_ports",
            "brute_force_tls_ports",
            "brute_force_command_ports",
            "beacon_ignore_ports",
        ):
            bad = [p for p in getattr(self, name) if not 0 <= p <= 65535]
            if bad:
                problems.append(f"{name} holds {bad}, not ports (0-65535)")
        if problems:
            raise ConfigError("invalid sniffer.rules: " + "; ".join(problems))


@dataclass(frozen=True)
class PublishConfig:
    # Send flow batches to the detector; false runs capture and fast rules only.
    enabled: bool = True
    # ZeroMQ endpoint of the detector's flow channel.
    endpoint: str = "tcp://127.0.0.1:5571"
    # push (one detector) or pub (several subscribers).
    pattern: Literal["push", "pub"] = "push"
    # Bind the endpoint instead of connecting to it (default: PUB binds, PUSH connects).
    bind: bool | None = None
    # Channel name bound into every frame; the detector must use the same one.
    channel: str = "flows"
    # Peer ids (keys of transport.peers) the batches are sealed for.
    recipients: tuple[str, ...] = ("detector",)
    # Sensor id sent in every FlowBatch; empty means: node.id, else the host name.
    sensor_id: str = ""


@dataclass(frozen=True)
class SnifferConfig:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    rules: FastRulesConfig = field(default_factory=FastRulesConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
