/* xdp/flow_parse.h — the packet parser: Ethernet, VLAN tags, IPv4, IPv6 (with extension
 * headers), TCP, UDP, ICMP and DNS queries, into a struct mld_pkt (flow_types.h).
 *
 * Shared by the XDP program and native/ (whose link_layer.h puts the other capture link
 * types in front of it). Nothing here may use libc or BPF helpers directly: only the macros
 * of flow_types.h's portability block.
 */
#ifndef MLD_FLOW_PARSE_H
#define MLD_FLOW_PARSE_H

#include "flow_types.h"

/* Result of parsing one packet. */
#define MLD_PARSE_OK 0
#define MLD_PARSE_NOT_IP 1      /* ARP, LLDP, ...: not an error, not a flow */
#define MLD_PARSE_TRUNCATED 2   /* a header runs past the captured bytes */
#define MLD_PARSE_MALFORMED 3   /* a header field is impossible (bad version, IHL < 5) */

/* DNS query names are walked for at most this many labels. */
#define MLD_DNS_MAX_LABELS 10
#define MLD_DNS_PORT 53

/* ---- parsing --------------------------------------------------------------------------- */
/* All parsers take [p, end) with p the first byte of their header. They only read bytes
 * after checking them against end, the way the verifier demands. */

#define MLD_ETH_P_IP 0x0800
#define MLD_ETH_P_IPV6 0x86DD
#define MLD_ETH_P_8021Q 0x8100
#define MLD_ETH_P_8021AD 0x88A8
#define MLD_IPV6_MAX_EXT 6

MLD_INLINE __u16 mld_be16(const __u8 *p) { return (__u16)(((__u16)p[0] << 8) | p[1]); }
MLD_INLINE __u32 mld_be32(const __u8 *p)
{
    return ((__u32)p[0] << 24) | ((__u32)p[1] << 16) | ((__u32)p[2] << 8) | p[3];
}

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
        pkt->tcp_seq = mld_be32(p + 4);
        pkt->tcp_ack = mld_be32(p + 8);
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

#endif /* MLD_FLOW_PARSE_H */
