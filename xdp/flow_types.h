/* xdp/flow_types.h — the types of ML Defender's flow engine, and the constants they carry.
 *
 * The structs that cross the kernel/user boundary (flow key and state, the exported flow
 * event, the export rules, the XDP counters, the blocklist's key and value) and the parser's
 * per-packet result, with the constants stored in them (end reasons, state flags, TCP flag
 * bits, IP protocols). Included by flow_parse.h and flow_update.h, and through flow.h by the
 * XDP program (compiled by BCC with MLD_BPF defined). native/ includes it too and hands
 * every struct's layout and every integer #define of this file to Python (native.structs):
 * that is how Python reads these types, and nothing in Python restates them.
 *
 * Layout rules: every struct that crosses the kernel/user boundary has explicit padding,
 * sizes that are multiples of 8 (but struct mld_lpm_key, the kernel's 20-byte LPM trie
 * key) and no implicit holes, so BCC, the C compiler and the NumPy
 * dtypes and ctypes built from offsetof() in native/ agree byte for byte (tests/native
 * checks that the members of every struct tile it exactly).
 *
 * Units: timestamps in ns (kernel monotonic clock live, capture time offline; user space
 * converts live times to the epoch), lengths in bytes at the IP layer (from the IP header's
 * length field, so Ethernet padding and capture truncation do not change them).
 */
#ifndef MLD_FLOW_TYPES_H
#define MLD_FLOW_TYPES_H

/* ---- portability ----------------------------------------------------------------------- */
#ifdef MLD_BPF
/* BCC provides __u8.. __u64 and __always_inline through its own headers. */
#define MLD_INLINE static __always_inline
#define MLD_UNROLL _Pragma("unroll")
#else
#include <linux/types.h>
#include <string.h>
#define MLD_INLINE static inline __attribute__((always_inline))
#define MLD_UNROLL
#endif

#define MLD_MEMCPY(d, s, n) __builtin_memcpy((d), (s), (n))
#define MLD_MEMSET(d, c, n) __builtin_memset((d), (c), (n))

/* ---- constants ------------------------------------------------------------------------- */
/* native/ exports every integer #define of this file to Python (native.structs). */
/* EndReason values: must equal mld.v1.EndReason (tests/native checks it). */
#define MLD_END_FIN 1
#define MLD_END_RST 2
#define MLD_END_IDLE_TIMEOUT 3
#define MLD_END_ACTIVE_TIMEOUT 4
#define MLD_END_EVICTED 5
#define MLD_END_CAPTURE_END 6

/* Flow state flags. */
#define MLD_F_INITIATOR_LO 0x01 /* the initiator is the key's "lo" endpoint */
#define MLD_F_FIN_FWD 0x02      /* a FIN went initiator -> responder */
#define MLD_F_FIN_BWD 0x04      /* a FIN went responder -> initiator */
#define MLD_F_RST 0x08          /* a RST was seen */
#define MLD_F_L4 0x10           /* the first packet carried a transport header we parsed */
/* TCP handshake evidence (flow_update.h, "Handshake evidence"). */
#define MLD_F_INIT_SYN 0x20     /* the flow began with the initiator's SYN (init_isn is set) */
#define MLD_F_SYNACK 0x40       /* the responder's SYN-ACK acknowledging it was seen
                                   (resp_isn is set) */
#define MLD_F_HS_CONFLICT 0x80  /* two different SYN-ACKs: the evidence is void */
#define MLD_F_HS_VERIFIED 0x100 /* the initiator acknowledged resp_isn + 1: it received the
                                   responder's SYN-ACK, so its address is its own */
#define MLD_F_INTERIM 0x200     /* set on exported records only: an interim update of a flow
                                   that goes on (counters so far; the final record follows) */
#define MLD_F_FLOOD 0x400       /* set on flood records only (sniffer/overload.py): the
                                   summary of many new flows made in overload mode */

/* TCP flag bits as on the wire (byte 13 of the TCP header). */
#define MLD_TCP_FIN 0x01
#define MLD_TCP_SYN 0x02
#define MLD_TCP_RST 0x04
#define MLD_TCP_PSH 0x08
#define MLD_TCP_ACK 0x10
#define MLD_TCP_URG 0x20
#define MLD_TCP_ECE 0x40
#define MLD_TCP_CWR 0x80

#define MLD_PROTO_TCP 6
#define MLD_PROTO_UDP 17
#define MLD_PROTO_ICMP 1
#define MLD_PROTO_ICMPV6 58

/* Inter-arrival squares are summed in units of 1024 ns so that they fit 64 bits: the sum of
 * squared gaps is at most (flow duration / 1024 ns)^2, which fits while the active timeout
 * is under an hour (MLD_MAX_ACTIVE_TIMEOUT_NS). */
#define MLD_IAT_SQ_SHIFT 10
/* DNS: the longest query name of a flow is kept (raw wire labels, truncated to this many
 * bytes) for its entropy: a tunnel's data queries are its longest names, while its first
 * query is often a short handshake. */
#define MLD_DNS_NAME_MAX 48
#define MLD_MAX_ACTIVE_TIMEOUT_NS (3600ULL * 1000000000ULL)

/* struct mld_pkt's frag bits (set by the parser). */
#define MLD_FRAG_IS 0x01   /* the packet is an IP fragment (first or later) */
#define MLD_FRAG_TINY 0x02 /* a first fragment too short for its transport header, or a TCP
                              fragment at offset 8 (inside the first one's TCP header) */

/* ---- structs crossing the kernel/user boundary ----------------------------------------- */

/* Canonical flow key: the two endpoints ordered so both directions of a conversation give
 * the same key. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). For ICMP/ICMPv6
 * and protocols without ports both ports are 0. */
struct mld_flow_key {
    __u8 addr_lo[16];
    __u8 addr_hi[16];
    __u16 port_lo;      /* port of addr_lo, host byte order */
    __u16 port_hi;      /* port of addr_hi, host byte order */
    __u8 protocol;      /* IP protocol after IPv6 extension headers */
    __u8 ip_version;    /* 4 or 6 */
    __u16 pad;          /* always 0 */
};

/* Statistics of one direction of a flow. */
struct mld_dir_stats {
    __u64 packets;
    __u64 bytes;         /* sum of IP-layer lengths */
    __u64 payload_bytes; /* sum of transport payload lengths */
    __u64 len_sumsq;     /* sum of squared IP-layer lengths */
    __u64 iat_sum_ns;    /* sum of gaps between consecutive packets of this direction */
    __u64 iat_min_ns;
    __u64 iat_max_ns;
    __u64 iat_sumsq;     /* sum of (gap >> MLD_IAT_SQ_SHIFT)^2 */
    __u64 last_ts_ns;    /* time of this direction's latest packet */
    __u32 len_min;
    __u32 len_max;
    __u32 syn;
    __u32 fin;
    __u32 rst;
    __u32 psh;
    __u32 ack;
    __u32 urg;
    __u32 ece;
    __u32 cwr;
    __u32 init_window;  /* TCP window of this direction's first packet, unscaled */
    __u32 pad;
};

/* State of one flow: dir[0] is initiator -> responder (forward), dir[1] the reverse. */
struct mld_flow_state {
    struct mld_dir_stats dir[2];
    __u64 first_ts_ns;
    __u64 last_ts_ns;
    __u32 flags;        /* MLD_F_* */
    __u16 vlan_id;      /* outer 802.1Q id of the first packet, 0 untagged */
    __u8 icmp_type;     /* ICMP/ICMPv6 type of the first packet */
    __u8 icmp_code;     /* ICMP/ICMPv6 code of the first packet */
    __u8 end_reason;    /* MLD_END_*, set when exported */
    __u8 dns_qname_len; /* wire length of the longest DNS query name, 0 none */
    __u8 pad[6];
    __u32 dns_queries;  /* DNS queries (UDP to port 53, QR=0) sent by the initiator */
    __u32 dns_qname_len_sum; /* sum of their name wire lengths */
    __u8 dns_qname[MLD_DNS_NAME_MAX]; /* longest query name, raw labels, truncated */
    /* IP fragments (both directions). A fragmented datagram's first fragment joins the flow
     * of its ports, its later fragments (no transport header) the flow with ports 0. */
    __u32 frag_count;         /* fragments */
    __u32 tiny_frag_count;    /* of them MLD_FRAG_TINY */
    __u32 overlap_frag_count; /* of them starting inside bytes already seen of their
                                 datagram (in-order and reverse-order overlaps and duplicates;
                                 see mld_frag_add) */
    __u32 frag_id;            /* bookkeeping: datagram id of the latest fragment */
    __u32 frag_lo;            /* bookkeeping: [frag_lo, frag_hi) is a contiguous range of */
    __u32 frag_hi;            /*   that datagram's bytes seen in this flow */
    __u32 init_isn;     /* sequence number of the initiator's SYN (MLD_F_INIT_SYN) */
    __u32 resp_isn;     /* sequence number of the responder's SYN-ACK (MLD_F_SYNACK) */
    __u64 interim_ts_ns; /* time of the packet that made the latest interim record, 0 none */
};

/* One exported flow: what the ring buffer carries and what native/ returns. */
struct mld_flow_event {
    struct mld_flow_key key;
    struct mld_flow_state state;
};

/* Export rules, shared by the kernel sweeper/program and the offline engine. */
struct mld_flow_config {
    __u64 idle_timeout_ns;   /* no packet for this long ends the flow */
    __u64 active_timeout_ns; /* a flow older than this is exported and continues as a new one */
    __u64 interim_ns;        /* a flow that goes on is exported as an interim record (flag
                                MLD_F_INTERIM) this long after its start and after each
                                interim record; 0: no interim records */
};

/* Per-CPU counters of the XDP program (index 0 of a per-CPU array). Parse errors are
 * counted before the blocklist only when the IP header itself could not be read. */
struct mld_xdp_stats {
    __u64 packets;        /* every packet the program saw */
    __u64 bytes;          /* their frame lengths */
    __u64 parse_errors;   /* truncated or malformed packets (passed, not counted in flows) */
    __u64 non_ip;         /* ARP and other non-IP frames (passed) */
    __u64 ringbuf_drops;  /* exports lost because the ring buffer was full */
    __u64 flows_created;  /* new flow entries; created - exported - live = silently evicted */
    __u64 flows_exported; /* records written to the ring buffer */
    __u64 blocked_packets;/* packets dropped because their source is in the blocklist */
    __u64 blocked_bytes;
    /* parse_errors by reason (MLD_PARSE_* of flow_parse.h); they add up to parse_errors. */
    __u64 parse_truncated;  /* a header runs past the frame */
    __u64 parse_malformed;  /* an impossible field (IP version, IHL < 5, TCP offset < 5) */
    __u64 parse_bad_length; /* the IP length cannot hold the headers it announces */
    __u64 parse_ext_limit;  /* more IPv6 extension headers than the parser follows */
    __u64 parse_dropped;    /* parse errors dropped (parse_error_action drop), else passed */
    __u64 fragments;        /* IP fragments seen (not blocked) */
    __u64 tiny_fragments;   /* of them MLD_FRAG_TINY */
    __u64 rpf_dropped;      /* dropped by the reverse-path check (MLD_RPF): the route back
                               to their source leaves by another interface, or there is none */
    __u64 interim_exported; /* interim records (MLD_F_INTERIM) written to the ring buffer;
                               not in flows_exported, which counts flows that ended */
    /* Overload mode (struct mld_overload_config). A new flow is either created (a flow
     * entry, flows_created) or summarised (flows_summarised), never both. */
    __u64 interim_dropped;     /* of ringbuf_drops, interim records (the flow went on) */
    __u64 flows_summarised;    /* new flows folded into a flood summary instead of an entry */
    __u64 summary_lost;        /* of them, ones whose destination summary could not be
                                  stored (the summary map was full): counted, not described */
    __u64 src_summary_lost;    /* source-prefix summaries that could not be stored */
    __u64 overload_admitted;   /* new flows created during overload because their source
                                  had already sent admit_after new flows (a real sender) */
    __u64 overload_by_rate;    /* overload (re)started: too many new flows in a window */
    __u64 overload_by_ringbuf; /* overload (re)started: ring buffer backlog too high */
    __u64 overload_by_table;   /* overload (re)started: flow table nearly full */
};

/* Overload mode (written by user space at index 0 of an array). While overloaded, a new flow
 * whose source has not yet sent admit_after new flows in overload is not given a flow entry:
 * it is added to a flood summary of its destination (address, port, protocol) and of its
 * source prefix, which user space drains into flood records. Flows with an entry, and new
 * flows of sources that keep sending (scanners, real clients), keep the per-flow path. */
struct mld_overload_config {
    __u64 window_ns;          /* new flows are counted per window of this length */
    __u64 hold_ns;            /* overload lasts this long after its latest trigger */
    __u32 max_new_flows;      /* new flows in one window that trigger overload; 0: never */
    __u32 ringbuf_high;       /* ring buffer backlog (records submitted - consumed) that
                                 triggers overload; 0: never */
    __u32 table_high;         /* flow entries that trigger overload; 0: never */
    __u32 admit_after;        /* see above; 0: every new flow is summarised in overload */
    __u8 src_prefix4;         /* source prefix length of the summaries, IPv4 (bits) */
    __u8 src_prefix6;         /* source prefix length of the summaries, IPv6 (bits) */
    __u8 enabled;             /* 0: overload mode off (the table evicts, counted) */
    __u8 gen;                 /* summaries are written under this generation (0..3); user
                                 space moves it on and drains the generations before */
    __u8 pad[4];
};

/* Overload state, kernel side (index 0 of an array; atomic adds, plain window resets). */
struct mld_overload_state {
    __u64 window_start_ns;
    __u64 window_new;   /* new flows seen in the current window */
    __u64 until_ns;     /* overloaded while now < until_ns */
    __u64 inserted;     /* flow entries the program inserted */
    __u64 deleted;      /* flow entries the program deleted */
    __u64 submitted;    /* records submitted to the ring buffer */
};

/* Overload state, user side (index 0 of another array, written by user space only):
 * entries = inserted - deleted - user_deleted - evicted; ring buffer backlog = submitted -
 * consumed (BCC gives the program no handle on the ring buffer for bpf_ringbuf_query). */
struct mld_overload_user {
    __u64 user_deleted; /* flow entries user space removed (idle sweep, flush) */
    __u64 evicted;      /* entries the LRU table dropped, found by the sweep's table walk */
    __u64 consumed;     /* records user space read from the ring buffer */
};

#define MLD_FLOOD_DST 1 /* a summary per destination address, port and protocol */
#define MLD_FLOOD_SRC 2 /* a summary per source prefix and protocol */
#define MLD_FLOOD_REPLY 3 /* a summary per replying address, port and protocol: new flows
                             that start with a TCP SYN-ACK, RST or ACK (a victim's answers
                             to forged sources, its backscatter) */

struct mld_flood_key {
    __u8 addr[16];   /* the destination, the source prefix's network address, or the
                        replying source (MLD_FLOOD_REPLY) */
    __u16 port;      /* destination port (DST), source port (REPLY), 0 (SRC) */
    __u8 protocol;
    __u8 kind;       /* MLD_FLOOD_* */
    __u8 prefix_len; /* bits of addr that count (IPv4-mapped: 96 + IPv4 length) */
    __u8 ip_version;
    __u8 gen;        /* mld_overload_config.gen when written */
    __u8 pad;
};

struct mld_flood_stats {
    __u64 flows;       /* new flows summarised */
    __u64 packets;
    __u64 bytes;       /* IP-layer lengths */
    __u64 syn;         /* of the packets, TCP SYN without ACK */
    __u64 first_ts_ns;
    __u64 last_ts_ns;
};

/* Blocklist key (LPM trie): prefixlen counts bits of the IPv4-mapped 128-bit address, so an
 * IPv4 /24 is prefixlen 96 + 24. */
struct mld_lpm_key {
    __u32 prefixlen;
    __u8 addr[16];
};

/* Blocklist value, one per blocked prefix. expires_ns is on CLOCK_BOOTTIME (the program reads
 * bpf_ktime_get_boot_ns(), user space clock_gettime(CLOCK_BOOTTIME)): unlike the monotonic
 * clock the flows use, it keeps counting while the machine is suspended, so a block given a
 * TTL of ten minutes lapses ten real minutes later. The program drops a matching packet only
 * while now < expires_ns, so a block lapses on time even when the agent that set it died;
 * user space deletes lapsed entries. */
#define MLD_BLOCK_NEVER 0       /* expires_ns value: the entry never lapses */
struct mld_block {
    __u64 drops;      /* packets this entry dropped (atomic add in the program) */
    __u64 expires_ns; /* CLOCK_BOOTTIME ns at which the entry stops dropping; 0 = never */
};

/* Everything the parser extracts from one packet (stack only, never in a map). */
struct mld_pkt {
    __u8 saddr[16];     /* IPv4-mapped for IPv4 */
    __u8 daddr[16];
    __u64 ts_ns;
    __u32 ip_len;       /* IP-layer length from the header */
    __u32 payload_len;  /* transport payload length (after the L4 header) */
    __u16 sport;        /* host order; 0 without ports */
    __u16 dport;
    __u16 vlan_id;
    __u16 window;
    __u8 protocol;
    __u8 ip_version;
    __u8 tcp_flags;
    __u8 has_l4;        /* the transport header was present and parsed */
    __u8 icmp_type;
    __u8 icmp_code;
    __u8 dns_qname_len; /* 0 unless the packet is a DNS query */
    __u8 pad[1];
    __u8 dns_qname[MLD_DNS_NAME_MAX];
    __u32 frag_id;      /* fragments: the datagram's id (IPv4 16 bits, IPv6 32 bits) */
    __u32 frag_off;     /* fragments: the bytes they cover in the datagram's payload, */
    __u32 frag_end;     /*   [frag_off, frag_end) */
    __u8 frag;          /* MLD_FRAG_* */
    __u8 pad2[3];
    __u32 tcp_seq;      /* TCP sequence number, host order (0 without TCP) */
    __u32 tcp_ack;      /* TCP acknowledgment number, host order (0 without TCP) */
};

#endif /* MLD_FLOW_TYPES_H */
