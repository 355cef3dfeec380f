/* xdp/flow_parse.h — the packet parser: Ethernet, VLAN tags, IPv4, IPv6 (with extension
 * headers), TCP, UDP, ICMP and DNS queries, into a struct mld_pkt (flow_types.h).
 *
 * Two steps, so that a caller can act on the source address before anything after the
 * fixed IP header is read: mld_parse_eth_hdr() (or mld_parse_ip_hdr()) stops after the
 * IPv4/IPv6 header with the addresses filled and a pointer to that header, and
 * mld_parse_ip_rest() parses IPv4 options and fragments, IPv6 extension headers, the
 * transport header and DNS. mld_parse_eth() and mld_parse_ip() run both steps. The XDP
 * program looks the source up in the blocklist between the two, so a packet from a blocked
 * source is dropped whatever follows its IP header; native/ runs both steps at once.
 *
 * Fragments (IPv4, and IPv6 fragment headers) fill pkt->frag (MLD_FRAG_*) with the datagram
 * id and the byte range the fragment covers. A first fragment whose IP length cannot hold
 * the transport header (RFC 1858's tiny fragment, an RFC 7112 violation in IPv6) keys its
 * flow by the ports when it holds them and is flagged MLD_FRAG_TINY, as is a TCP fragment
 * at offset 8 (it rewrites the TCP header: RFC 1858's overlapping-fragment attack).
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
#define MLD_PARSE_BAD_LENGTH 4  /* the IP length cannot hold the headers it announces */
#define MLD_PARSE_EXT_LIMIT 5   /* more IPv6 extension headers than MLD_IPV6_MAX_EXT */

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

/* Note a fragment of datagram id covering bytes [off, off + len) of its payload. */
MLD_INLINE void mld_note_frag(struct mld_pkt *pkt, __u32 id, __u32 off, __u32 len)
{
    pkt->frag = MLD_FRAG_IS;
    pkt->frag_id = id;
    pkt->frag_off = off;
    pkt->frag_end = off + len;
    /* A TCP fragment at offset 8 lands inside the TCP header of the first one. */
    if (off == 8 && pkt->protocol == MLD_PROTO_TCP)
        pkt->frag |= MLD_FRAG_TINY;
}

/* The transport header at p; l3_hdr_len bytes of IP headers precede it within ip_len. */
MLD_INLINE int mld_parse_l4(const __u8 *p, const __u8 *end, __u32 l3_hdr_len,
                            struct mld_pkt *pkt)
{
    __u32 hdr = 0;
    __u32 need;
    __u32 rest = pkt->ip_len > l3_hdr_len ? pkt->ip_len - l3_hdr_len : 0;

    if (pkt->protocol == MLD_PROTO_TCP)
        need = 20;
    else if (pkt->protocol == MLD_PROTO_UDP)
        need = 8;
    else if (pkt->protocol == MLD_PROTO_ICMP || pkt->protocol == MLD_PROTO_ICMPV6)
        need = 4;
    else {
        /* GRE, ESP, SCTP, ...: no ports; everything after the IP header is payload. */
        pkt->payload_len = rest;
        return MLD_PARSE_OK;
    }
    if (rest < need) {
        if (!(pkt->frag & MLD_FRAG_IS))
            return MLD_PARSE_BAD_LENGTH;
        /* A tiny first fragment: key it by the ports when it holds them. */
        pkt->frag |= MLD_FRAG_TINY;
        if (rest >= 4 && pkt->protocol != MLD_PROTO_ICMP && pkt->protocol != MLD_PROTO_ICMPV6) {
            if (p + 4 > end)
                return MLD_PARSE_TRUNCATED;
            pkt->sport = mld_be16(p);
            pkt->dport = mld_be16(p + 2);
        }
        return MLD_PARSE_OK;
    }
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
        if (hdr > rest) {
            if (!(pkt->frag & MLD_FRAG_IS))
                return MLD_PARSE_BAD_LENGTH;
            pkt->frag |= MLD_FRAG_TINY; /* the options run into the next fragment */
        }
    } else if (pkt->protocol == MLD_PROTO_UDP) {
        if (p + 8 > end)
            return MLD_PARSE_TRUNCATED;
        pkt->sport = mld_be16(p);
        pkt->dport = mld_be16(p + 2);
        hdr = 8;
        if (pkt->dport == MLD_DNS_PORT)
            mld_parse_dns(p + 8, end, pkt);
    } else {
        if (p + 4 > end)
            return MLD_PARSE_TRUNCATED;
        pkt->icmp_type = p[0];
        pkt->icmp_code = p[1];
        hdr = 8;
    }
    pkt->has_l4 = 1;
    pkt->payload_len = rest > hdr ? rest - hdr : 0;
    return MLD_PARSE_OK;
}

/* Step 1 for IPv4: the fixed header (addresses, length, protocol). */
MLD_INLINE int mld_parse_ipv4_hdr(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    __u32 ihl;

    if (p + 20 > end)
        return MLD_PARSE_TRUNCATED;
    if ((p[0] >> 4) != 4)
        return MLD_PARSE_MALFORMED;
    ihl = (__u32)(p[0] & 0x0F) * 4;
    if (ihl < 20)
        return MLD_PARSE_MALFORMED;
    pkt->ip_version = 4;
    pkt->ip_len = mld_be16(p + 2);
    pkt->protocol = p[9];
    MLD_MEMSET(pkt->saddr, 0, 10);
    MLD_MEMSET(pkt->daddr, 0, 10);
    pkt->saddr[10] = 0xFF;
    pkt->saddr[11] = 0xFF;
    pkt->daddr[10] = 0xFF;
    pkt->daddr[11] = 0xFF;
    MLD_MEMCPY(&pkt->saddr[12], p + 12, 4);
    MLD_MEMCPY(&pkt->daddr[12], p + 16, 4);
    return MLD_PARSE_OK;
}

/* Step 2 for IPv4: options, fragments, the transport header. */
MLD_INLINE int mld_parse_ipv4_rest(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    __u32 ihl;
    __u16 frag;
    __u32 off;

    if (p + 20 > end)
        return MLD_PARSE_TRUNCATED;
    ihl = (__u32)(p[0] & 0x0F) * 4;
    if (pkt->ip_len < ihl)
        return MLD_PARSE_BAD_LENGTH;
    frag = mld_be16(p + 6);
    off = (__u32)(frag & 0x1FFF) * 8;
    if (off != 0 || (frag & 0x2000) != 0)
        mld_note_frag(pkt, mld_be16(p + 4), off, pkt->ip_len - ihl);
    if (off != 0) {
        /* A later fragment: no transport header; all of it is payload. */
        pkt->payload_len = pkt->ip_len - ihl;
        return MLD_PARSE_OK;
    }
    if (p + ihl > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_l4(p + ihl, end, ihl, pkt);
}

/* Step 1 for IPv6: the fixed header; pkt->protocol is its next header for now. */
MLD_INLINE int mld_parse_ipv6_hdr(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    if (p + 40 > end)
        return MLD_PARSE_TRUNCATED;
    if ((p[0] >> 4) != 6)
        return MLD_PARSE_MALFORMED;
    pkt->ip_version = 6;
    pkt->ip_len = 40 + (__u32)mld_be16(p + 4);
    pkt->protocol = p[6];
    MLD_MEMCPY(pkt->saddr, p + 8, 16);
    MLD_MEMCPY(pkt->daddr, p + 24, 16);
    return MLD_PARSE_OK;
}

/* Step 2 for IPv6: extension headers (at most MLD_IPV6_MAX_EXT), the transport header. */
MLD_INLINE int mld_parse_ipv6_rest(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    const __u8 *h;
    __u32 off = 40;
    __u8 next;
    int i;

    if (p + 40 > end)
        return MLD_PARSE_TRUNCATED;
    next = p[6];
    h = p + 40;
    MLD_UNROLL
    for (i = 0; i < MLD_IPV6_MAX_EXT; i++) {
        __u32 len;

        if (next != 0 && next != 43 && next != 44 && next != 60 && next != 51)
            break;
        if (off + 8 > pkt->ip_len)
            return MLD_PARSE_BAD_LENGTH;
        if (h + 8 > end)
            return MLD_PARSE_TRUNCATED;
        if (next == 44) {
            __u32 foff = mld_be16(h + 2) & 0xFFF8;
            __u32 data = pkt->ip_len - off - 8;

            pkt->protocol = h[0];
            if (foff != 0 || (h[3] & 1) != 0)
                mld_note_frag(pkt, mld_be32(h + 4), foff, data);
            if (foff != 0) {
                /* A later fragment: no transport header. */
                pkt->payload_len = data;
                return MLD_PARSE_OK;
            }
            len = 8;
        } else if (next == 51) {
            len = ((__u32)h[1] + 2) * 4; /* AH counts 4-byte words */
        } else {
            len = ((__u32)h[1] + 1) * 8;
        }
        if (off + len > pkt->ip_len)
            return MLD_PARSE_BAD_LENGTH;
        next = h[0];
        h += len;
        off += len;
    }
    pkt->protocol = next;
    if (next == 0 || next == 43 || next == 44 || next == 60 || next == 51)
        return MLD_PARSE_EXT_LIMIT;
    if (h > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_l4(h, end, off, pkt);
}

/* Step 1 from the IP header; version 0 means "read it from the first nibble". */
MLD_INLINE int mld_parse_ip_hdr(const __u8 *p, const __u8 *end, int version,
                                struct mld_pkt *pkt)
{
    if (version == 0) {
        if (p + 1 > end)
            return MLD_PARSE_TRUNCATED;
        version = p[0] >> 4;
    }
    if (version == 4)
        return mld_parse_ipv4_hdr(p, end, pkt);
    if (version == 6)
        return mld_parse_ipv6_hdr(p, end, pkt);
    return MLD_PARSE_NOT_IP;
}

/* Step 2: everything after the IP header at p (after step 1 returned MLD_PARSE_OK). */
MLD_INLINE int mld_parse_ip_rest(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    if (pkt->ip_version == 4)
        return mld_parse_ipv4_rest(p, end, pkt);
    return mld_parse_ipv6_rest(p, end, pkt);
}

/* Both steps from the IP header. */
MLD_INLINE int mld_parse_ip(const __u8 *p, const __u8 *end, int version, struct mld_pkt *pkt)
{
    int rc = mld_parse_ip_hdr(p, end, version, pkt);

    return rc == MLD_PARSE_OK ? mld_parse_ip_rest(p, end, pkt) : rc;
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

/* Step 1 behind up to two VLAN tags (802.1Q, 802.1ad) starting at p, where proto is the
 * ethertype that precedes them, noting the outer VLAN id; *ip is set to the IP header.
 * Ethernet uses it, and so do link layers that carry an ethertype themselves (Linux SLL). */
MLD_INLINE int mld_parse_vlan_ethertype_hdr(const __u8 *p, const __u8 *end, __u16 proto,
                                            struct mld_pkt *pkt, const __u8 **ip)
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
    *ip = p;
    if (proto == MLD_ETH_P_IP)
        return mld_parse_ip_hdr(p, end, 4, pkt);
    if (proto == MLD_ETH_P_IPV6)
        return mld_parse_ip_hdr(p, end, 6, pkt);
    return MLD_PARSE_NOT_IP;
}

/* Both steps behind VLAN tags. */
MLD_INLINE int mld_parse_vlan_ethertype(const __u8 *p, const __u8 *end, __u16 proto,
                                        struct mld_pkt *pkt)
{
    const __u8 *ip = p;
    int rc = mld_parse_vlan_ethertype_hdr(p, end, proto, pkt, &ip);

    return rc == MLD_PARSE_OK ? mld_parse_ip_rest(ip, end, pkt) : rc;
}

/* Step 1 of an Ethernet frame with up to two VLAN tags; *ip is set to the IP header. */
MLD_INLINE int mld_parse_eth_hdr(const __u8 *p, const __u8 *end, struct mld_pkt *pkt,
                                 const __u8 **ip)
{
    if (p + 14 > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_vlan_ethertype_hdr(p + 14, end, mld_be16(p + 12), pkt, ip);
}

/* Both steps of an Ethernet frame. */
MLD_INLINE int mld_parse_eth(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    const __u8 *ip = p;
    int rc = mld_parse_eth_hdr(p, end, pkt, &ip);

    return rc == MLD_PARSE_OK ? mld_parse_ip_rest(ip, end, pkt) : rc;
}

#endif /* MLD_FLOW_PARSE_H */
