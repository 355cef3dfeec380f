/* xdp/flow.h — the one definition of ML Defender's flow engine.
 *
 * Included by the XDP program (xdp/flow_monitor.bpf.c, compiled by BCC with MLD_BPF defined)
 * and by the user-space extension (native/, plain C). Both parse packets, key flows and
 * update flow state with the functions below, so a capture replayed offline and the same
 * traffic seen live give the same counters. Nothing here may use libc or BPF helpers
 * directly: only the macros defined in the portability block.
 *
 * Layout rules: every struct that crosses the kernel/user boundary has explicit padding,
 * sizes that are multiples of 8 and no implicit holes, so BCC, the C compiler and the NumPy
 * dtype built from offsetof() in native/ agree byte for byte.
 *
 * Units: timestamps in ns (kernel monotonic clock live, capture time offline; user space
 * converts live times to the epoch), lengths in bytes at the IP layer (from the IP header's
 * length field, so Ethernet padding and capture truncation do not change them).
 */
#ifndef MLD_FLOW_H
#define MLD_FLOW_H

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

/* ---- constants shared with proto/events.proto ------------------------------------------ */
/* EndReason values: must equal mld.v1.EndReason (tests/native checks it). */
#define MLD_END_FIN 1
#define MLD_END_RST 2
#define MLD_END_IDLE_TIMEOUT 3
#define MLD_END_ACTIVE_TIMEOUT 4
#define MLD_END_EVICTED 5
#define MLD_END_CAPTURE_END 6

/* Result of parsing one packet. */
#define MLD_PARSE_OK 0
#define MLD_PARSE_NOT_IP 1      /* ARP, LLDP, ...: not an error, not a flow */
#define MLD_PARSE_TRUNCATED 2   /* a header runs past the captured bytes */
#define MLD_PARSE_MALFORMED 3   /* a header field is impossible (bad version, IHL < 5) */

/* What the caller must do after mld_flow_update(). */
#define MLD_ACT_NONE 0          /* keep the flow */
#define MLD_ACT_EXPORT 1        /* the state is final (this packet included): export, delete */
#define MLD_ACT_RESTART 2       /* the state is an older flow, final, without this packet:
                                   export it, then mld_flow_init() with this packet */

/* Flow state flags. */
#define MLD_F_INITIATOR_LO 0x01 /* the initiator is the key's "lo" endpoint */
#define MLD_F_FIN_FWD 0x02      /* a FIN went initiator -> responder */
#define MLD_F_FIN_BWD 0x04      /* a FIN went responder -> initiator */
#define MLD_F_RST 0x08          /* a RST was seen */
#define MLD_F_L4 0x10           /* the first packet carried a transport header we parsed */

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
 * query is often a short handshake; names are walked for at most this many labels. */
#define MLD_DNS_NAME_MAX 48
#define MLD_DNS_MAX_LABELS 10
#define MLD_DNS_PORT 53
#define MLD_MAX_ACTIVE_TIMEOUT_NS (3600ULL * 1000000000ULL)

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
};

/* Per-CPU counters of the XDP program (index 0 of a per-CPU array). */
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
};

/* ---- parsing --------------------------------------------------------------------------- */
/* All parsers take [p, end) with p the first byte of their header. They only read bytes
 * after checking them against end, the way the verifier demands. */

#define MLD_ETH_P_IP 0x0800
#define MLD_ETH_P_IPV6 0x86DD
#define MLD_ETH_P_8021Q 0x8100
#define MLD_ETH_P_8021AD 0x88A8
#define MLD_IPV6_MAX_EXT 6

MLD_INLINE __u16 mld_be16(const __u8 *p) { return (__u16)(((__u16)p[0] << 8) | p[1]); }

/* A DNS query (QR=0, at least one question) in a UDP payload: record the first name's wire
 * length and its first MLD_DNS_NAME_MAX bytes. Anything odd leaves the packet a plain one. */
MLD_INLINE void mld_parse_dns(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    const __u8 *n = p + 12;
    __u32 off = 0;
    int i;

    if (p + 12 > end || (p[2] & 0x80) != 0 || mld_be16(p + 4) == 0)
        return;
    MLD_UNROLL
    for (i = 0; i < MLD_DNS_MAX_LABELS; i++) {
        __u8 l;

        if (off > 255 || n + off + 1 > end)
            return;
        l = n[off];
        if (l > 63)
            return; /* compression pointer or garbage in a question: not a plain query */
        off += (__u32)l + 1;
        if (l == 0)
            break;
    }
    pkt->dns_qname_len = off > 255 ? 255 : (__u8)off;
    MLD_UNROLL
    for (i = 0; i < MLD_DNS_NAME_MAX; i++) {
        if (n + i + 1 > end || (__u32)i >= off)
            break;
        pkt->dns_qname[i] = n[i];
    }
}

MLD_INLINE int mld_parse_l4(const __u8 *p, const __u8 *end, __u32 l3_hdr_len,
                            struct mld_pkt *pkt)
{
    __u32 hdr = 0;
    __u32 rest;

    if (pkt->protocol == MLD_PROTO_TCP) {
        if (p + 20 > end)
            return MLD_PARSE_TRUNCATED;
        pkt->sport = mld_be16(p);
        pkt->dport = mld_be16(p + 2);
        pkt->tcp_flags = p[13];
        pkt->window = mld_be16(p + 14);
        hdr = (__u32)(p[12] >> 4) * 4;
        if (hdr < 20)
            return MLD_PARSE_MALFORMED;
    } else if (pkt->protocol == MLD_PROTO_UDP) {
        if (p + 8 > end)
            return MLD_PARSE_TRUNCATED;
        pkt->sport = mld_be16(p);
        pkt->dport = mld_be16(p + 2);
        hdr = 8;
        if (pkt->dport == MLD_DNS_PORT)
            mld_parse_dns(p + 8, end, pkt);
    } else if (pkt->protocol == MLD_PROTO_ICMP || pkt->protocol == MLD_PROTO_ICMPV6) {
        if (p + 4 > end)
            return MLD_PARSE_TRUNCATED;
        pkt->icmp_type = p[0];
        pkt->icmp_code = p[1];
        hdr = 8;
    } else {
        /* GRE, ESP, SCTP, ...: no ports; everything after the IP header is payload. */
        rest = pkt->ip_len > l3_hdr_len ? pkt->ip_len - l3_hdr_len : 0;
        pkt->payload_len = rest;
        return MLD_PARSE_OK;
    }
    pkt->has_l4 = 1;
    rest = pkt->ip_len > l3_hdr_len ? pkt->ip_len - l3_hdr_len : 0;
    pkt->payload_len = rest > hdr ? rest - hdr : 0;
    return MLD_PARSE_OK;
}

MLD_INLINE int mld_parse_ipv4(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    __u32 ihl;
    __u16 frag;

    if (p + 20 > end)
        return MLD_PARSE_TRUNCATED;
    if ((p[0] >> 4) != 4)
        return MLD_PARSE_MALFORMED;
    ihl = (__u32)(p[0] & 0x0F) * 4;
    if (ihl < 20)
        return MLD_PARSE_MALFORMED;
    pkt->ip_version = 4;
    pkt->ip_len = mld_be16(p + 2);
    if (pkt->ip_len < ihl)
        return MLD_PARSE_MALFORMED;
    pkt->protocol = p[9];
    MLD_MEMSET(pkt->saddr, 0, 10);
    MLD_MEMSET(pkt->daddr, 0, 10);
    pkt->saddr[10] = 0xFF;
    pkt->saddr[11] = 0xFF;
    pkt->daddr[10] = 0xFF;
    pkt->daddr[11] = 0xFF;
    MLD_MEMCPY(&pkt->saddr[12], p + 12, 4);
    MLD_MEMCPY(&pkt->daddr[12], p + 16, 4);
    frag = mld_be16(p + 6) & 0x1FFF;
    if (frag != 0) {
        /* A later fragment: no transport header; all of it is payload. */
        pkt->payload_len = pkt->ip_len - ihl;
        return MLD_PARSE_OK;
    }
    if (p + ihl > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_l4(p + ihl, end, ihl, pkt);
}

MLD_INLINE int mld_parse_ipv6(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    const __u8 *h;
    __u32 off = 40;
    __u8 next;
    int i;

    if (p + 40 > end)
        return MLD_PARSE_TRUNCATED;
    if ((p[0] >> 4) != 6)
        return MLD_PARSE_MALFORMED;
    pkt->ip_version = 6;
    pkt->ip_len = 40 + (__u32)mld_be16(p + 4);
    MLD_MEMCPY(pkt->saddr, p + 8, 16);
    MLD_MEMCPY(pkt->daddr, p + 24, 16);
    next = p[6];
    h = p + 40;
    MLD_UNROLL
    for (i = 0; i < MLD_IPV6_MAX_EXT; i++) {
        __u32 len;

        if (next != 0 && next != 43 && next != 44 && next != 60 && next != 51)
            break;
        if (h + 8 > end)
            return MLD_PARSE_TRUNCATED;
        if (next == 44) {
            /* Fragment header: a later fragment has no transport header. */
            if ((mld_be16(h + 2) & 0xFFF8) != 0) {
                pkt->protocol = h[0];
                pkt->payload_len = pkt->ip_len > off + 8 ? pkt->ip_len - off - 8 : 0;
                return MLD_PARSE_OK;
            }
            len = 8;
        } else if (next == 51) {
            len = ((__u32)h[1] + 2) * 4; /* AH counts 4-byte words */
        } else {
            len = ((__u32)h[1] + 1) * 8;
        }
        next = h[0];
        h += len;
        off += len;
    }
    pkt->protocol = next;
    if (next == 0 || next == 43 || next == 44 || next == 60 || next == 51)
        return MLD_PARSE_MALFORMED; /* more extension headers than we follow */
    if (h > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_l4(h, end, off, pkt);
}

/* Parse from the IP header; version 0 means "read it from the first nibble". */
MLD_INLINE int mld_parse_ip(const __u8 *p, const __u8 *end, int version, struct mld_pkt *pkt)
{
    if (version == 0) {
        if (p + 1 > end)
            return MLD_PARSE_TRUNCATED;
        version = p[0] >> 4;
    }
    if (version == 4)
        return mld_parse_ipv4(p, end, pkt);
    if (version == 6)
        return mld_parse_ipv6(p, end, pkt);
    return MLD_PARSE_NOT_IP;
}

/* Parse the IP part of a packet given its ethertype (after any VLAN tags). */
MLD_INLINE int mld_parse_ethertype(const __u8 *p, const __u8 *end, __u16 proto,
                                   struct mld_pkt *pkt)
{
    if (proto == MLD_ETH_P_IP)
        return mld_parse_ip(p, end, 4, pkt);
    if (proto == MLD_ETH_P_IPV6)
        return mld_parse_ip(p, end, 6, pkt);
    return MLD_PARSE_NOT_IP;
}

/* Skip up to two VLAN tags (802.1Q, 802.1ad) starting at p, where proto is the ethertype
 * that precedes them, noting the outer VLAN id; then parse the IP part. Ethernet uses it,
 * and so do link layers that carry an ethertype themselves (Linux SLL). */
MLD_INLINE int mld_parse_vlan_ethertype(const __u8 *p, const __u8 *end, __u16 proto,
                                        struct mld_pkt *pkt)
{
    int i;

    MLD_UNROLL
    for (i = 0; i < 2; i++) {
        if (proto != MLD_ETH_P_8021Q && proto != MLD_ETH_P_8021AD)
            break;
        if (p + 4 > end)
            return MLD_PARSE_TRUNCATED;
        if (i == 0)
            pkt->vlan_id = mld_be16(p) & 0x0FFF;
        proto = mld_be16(p + 2);
        p += 4;
    }
    return mld_parse_ethertype(p, end, proto, pkt);
}

/* Parse an Ethernet frame with up to two VLAN tags. */
MLD_INLINE int mld_parse_eth(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    if (p + 14 > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_vlan_ethertype(p + 14, end, mld_be16(p + 12), pkt);
}

/* ---- keys ------------------------------------------------------------------------------ */

/* Returns 1 when (a, pa) orders before (b, pb): the "lo" endpoint. */
MLD_INLINE int mld_endpoint_lt(const __u8 *a, __u16 pa, const __u8 *b, __u16 pb)
{
    int i;

    MLD_UNROLL
    for (i = 0; i < 16; i++) {
        if (a[i] != b[i])
            return a[i] < b[i];
    }
    return pa < pb;
}

/* Fill the canonical key; returns 1 when the packet's source is the key's lo endpoint. */
MLD_INLINE int mld_flow_key(const struct mld_pkt *pkt, struct mld_flow_key *key)
{
    int has_ports = pkt->protocol == MLD_PROTO_TCP || pkt->protocol == MLD_PROTO_UDP;
    __u16 sport = has_ports ? pkt->sport : 0;
    __u16 dport = has_ports ? pkt->dport : 0;
    int src_lo = mld_endpoint_lt(pkt->saddr, sport, pkt->daddr, dport);

    if (src_lo) {
        MLD_MEMCPY(key->addr_lo, pkt->saddr, 16);
        MLD_MEMCPY(key->addr_hi, pkt->daddr, 16);
        key->port_lo = sport;
        key->port_hi = dport;
    } else {
        MLD_MEMCPY(key->addr_lo, pkt->daddr, 16);
        MLD_MEMCPY(key->addr_hi, pkt->saddr, 16);
        key->port_lo = dport;
        key->port_hi = sport;
    }
    key->protocol = pkt->protocol;
    key->ip_version = pkt->ip_version;
    key->pad = 0;
    return src_lo;
}

/* ---- state update ---------------------------------------------------------------------- */

MLD_INLINE void mld_dir_add(struct mld_dir_stats *d, const struct mld_pkt *pkt)
{
    __u64 len = pkt->ip_len;
    __u8 f = pkt->tcp_flags;

    if (d->packets == 0) {
        d->len_min = pkt->ip_len;
        d->len_max = pkt->ip_len;
        d->init_window = pkt->protocol == MLD_PROTO_TCP ? pkt->window : 0;
        d->last_ts_ns = pkt->ts_ns;
    } else {
        /* Captures and multi-queue NICs can reorder time slightly: a negative gap is 0. */
        __u64 gap = pkt->ts_ns > d->last_ts_ns ? pkt->ts_ns - d->last_ts_ns : 0;
        __u64 g = gap >> MLD_IAT_SQ_SHIFT;

        if (d->packets == 1 || gap < d->iat_min_ns)
            d->iat_min_ns = gap;
        if (gap > d->iat_max_ns)
            d->iat_max_ns = gap;
        d->iat_sum_ns += gap;
        d->iat_sumsq += g * g;
        if (pkt->ts_ns > d->last_ts_ns)
            d->last_ts_ns = pkt->ts_ns;
        if (pkt->ip_len < d->len_min)
            d->len_min = pkt->ip_len;
        if (pkt->ip_len > d->len_max)
            d->len_max = pkt->ip_len;
    }
    d->packets += 1;
    d->bytes += len;
    d->payload_bytes += pkt->payload_len;
    d->len_sumsq += len * len;
    if (pkt->protocol == MLD_PROTO_TCP && pkt->has_l4) {
        d->syn += (f & MLD_TCP_SYN) ? 1 : 0;
        d->fin += (f & MLD_TCP_FIN) ? 1 : 0;
        d->rst += (f & MLD_TCP_RST) ? 1 : 0;
        d->psh += (f & MLD_TCP_PSH) ? 1 : 0;
        d->ack += (f & MLD_TCP_ACK) ? 1 : 0;
        d->urg += (f & MLD_TCP_URG) ? 1 : 0;
        d->ece += (f & MLD_TCP_ECE) ? 1 : 0;
        d->cwr += (f & MLD_TCP_CWR) ? 1 : 0;
    }
}

/* Add a packet to a flow and note FIN/RST; returns MLD_ACT_EXPORT when it ends the flow. */
MLD_INLINE int mld_flow_add(struct mld_flow_state *st, const struct mld_pkt *pkt, int src_lo)
{
    int fwd = (src_lo != 0) == ((st->flags & MLD_F_INITIATOR_LO) != 0);
    int closing = (st->flags & (MLD_F_FIN_FWD | MLD_F_FIN_BWD)) ==
                  (MLD_F_FIN_FWD | MLD_F_FIN_BWD);

    mld_dir_add(&st->dir[fwd ? 0 : 1], pkt);
    if (pkt->ts_ns > st->last_ts_ns)
        st->last_ts_ns = pkt->ts_ns;
    if (pkt->protocol == MLD_PROTO_TCP && pkt->has_l4) {
        if (pkt->tcp_flags & MLD_TCP_RST) {
            st->flags |= MLD_F_RST;
            st->end_reason = MLD_END_RST;
            return MLD_ACT_EXPORT;
        }
        if (pkt->tcp_flags & MLD_TCP_FIN)
            st->flags |= fwd ? MLD_F_FIN_FWD : MLD_F_FIN_BWD;
    }
    if (fwd && pkt->dns_qname_len != 0) {
        if (pkt->dns_qname_len > st->dns_qname_len) {
            st->dns_qname_len = pkt->dns_qname_len;
            MLD_MEMCPY(st->dns_qname, pkt->dns_qname, MLD_DNS_NAME_MAX);
        }
        st->dns_queries += 1;
        st->dns_qname_len_sum += pkt->dns_qname_len;
    }
    /* Both sides sent FIN before this packet: it is the last ACK, and it ends the flow. */
    if (closing) {
        st->end_reason = MLD_END_FIN;
        return MLD_ACT_EXPORT;
    }
    return MLD_ACT_NONE;
}

/* Start a flow with its first packet; returns MLD_ACT_EXPORT if that packet ends it (RST). */
MLD_INLINE int mld_flow_init(struct mld_flow_state *st, const struct mld_pkt *pkt, int src_lo)
{
    MLD_MEMSET(st, 0, sizeof(*st));
    st->flags = src_lo ? MLD_F_INITIATOR_LO : 0;
    if (pkt->has_l4)
        st->flags |= MLD_F_L4;
    st->first_ts_ns = pkt->ts_ns;
    st->last_ts_ns = pkt->ts_ns;
    st->vlan_id = pkt->vlan_id;
    st->icmp_type = pkt->icmp_type;
    st->icmp_code = pkt->icmp_code;
    return mld_flow_add(st, pkt, src_lo);
}

/* The reason a flow that stopped receiving packets ends with. */
MLD_INLINE __u8 mld_idle_reason(const struct mld_flow_state *st)
{
    __u32 both = MLD_F_FIN_FWD | MLD_F_FIN_BWD;

    return (st->flags & both) == both ? MLD_END_FIN : MLD_END_IDLE_TIMEOUT;
}

/* Has the flow been idle long enough to export at time now_ns? (used by both sweepers) */
MLD_INLINE int mld_flow_idle(const struct mld_flow_state *st, __u64 now_ns,
                             const struct mld_flow_config *cfg)
{
    return now_ns >= st->last_ts_ns && now_ns - st->last_ts_ns >= cfg->idle_timeout_ns;
}

/* Apply a packet to an existing flow. Returns:
 *   MLD_ACT_RESTART  the flow had already ended before this packet (idle or active timeout,
 *                    or a new SYN after both FINs): st holds the old flow with end_reason
 *                    set; export it, then mld_flow_init() with this packet;
 *   MLD_ACT_EXPORT   this packet ends the flow (RST, or the last ACK after both FINs);
 *   MLD_ACT_NONE     keep going. */
MLD_INLINE int mld_flow_update(struct mld_flow_state *st, const struct mld_pkt *pkt,
                               int src_lo, const struct mld_flow_config *cfg)
{
    __u32 both = MLD_F_FIN_FWD | MLD_F_FIN_BWD;

    if (mld_flow_idle(st, pkt->ts_ns, cfg)) {
        st->end_reason = mld_idle_reason(st);
        return MLD_ACT_RESTART;
    }
    if (pkt->ts_ns >= st->first_ts_ns && pkt->ts_ns - st->first_ts_ns >= cfg->active_timeout_ns) {
        st->end_reason = MLD_END_ACTIVE_TIMEOUT;
        return MLD_ACT_RESTART;
    }
    /* The same 5-tuple reused by a new connection right after a close. */
    if ((st->flags & both) == both && pkt->protocol == MLD_PROTO_TCP && pkt->has_l4 &&
        (pkt->tcp_flags & (MLD_TCP_SYN | MLD_TCP_ACK)) == MLD_TCP_SYN) {
        st->end_reason = MLD_END_FIN;
        return MLD_ACT_RESTART;
    }
    return mld_flow_add(st, pkt, src_lo);
}

#endif /* MLD_FLOW_H */
