/* native/link_layer.h — find the IP header behind a capture's link-layer header.
 *
 * Each decoder reads only inside [p, end) and hands the IP part to xdp/flow_parse.h's
 * parsers, so a packet gives the same struct mld_pkt whatever link type it was captured on.
 * Ethernet goes through mld_parse_eth exactly as in the XDP program.
 */
#ifndef MLD_LINK_LAYER_H
#define MLD_LINK_LAYER_H

#include <pcap/pcap.h>

#include "flow_parse.h"

#ifndef DLT_LINUX_SLL2
#define DLT_LINUX_SLL2 276
#endif
#ifndef DLT_IPV4
#define DLT_IPV4 228
#endif
#ifndef DLT_IPV6
#define DLT_IPV6 229
#endif
#ifndef DLT_PPP_WITH_DIR
#define DLT_PPP_WITH_DIR 204
#endif

/* Every link type mld_parse_link understands (pcap DLT_ values). */
static const int mld_supported_dlts[] = {
    DLT_EN10MB, DLT_RAW,   DLT_IPV4,       DLT_IPV6,  DLT_LINUX_SLL,  DLT_LINUX_SLL2,
    DLT_NULL,   DLT_LOOP,  DLT_PPP,        DLT_PPP_SERIAL, DLT_PPP_WITH_DIR, DLT_C_HDLC,
    DLT_PPP_ETHER,
};

static inline int mld_dlt_supported(int dlt)
{
    size_t i;

    for (i = 0; i < sizeof(mld_supported_dlts) / sizeof(mld_supported_dlts[0]); i++) {
        if (mld_supported_dlts[i] == dlt)
            return 1;
    }
    return 0;
}

/* pcap's name of a link type; libpcap 1.10 has none for DLT_PPP_WITH_DIR. */
static inline const char *mld_dlt_name(int dlt)
{
    const char *name = pcap_datalink_val_to_name(dlt);

    if (name != NULL)
        return name;
    return dlt == DLT_PPP_WITH_DIR ? "PPP_WITH_DIR" : "unknown";
}

/* PPP: optional 0xFF 0x03 address/control, then a 1-byte (compressed, odd) or 2-byte
 * protocol: 0x0021 IPv4, 0x0057 IPv6. */
static inline int mld_parse_ppp(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    __u16 proto;

    if (p + 2 > end)
        return MLD_PARSE_TRUNCATED;
    if (p[0] == 0xFF && p[1] == 0x03)
        p += 2;
    if (p + 1 > end)
        return MLD_PARSE_TRUNCATED;
    if (p[0] & 1) {
        proto = p[0];
        p += 1;
    } else {
        if (p + 2 > end)
            return MLD_PARSE_TRUNCATED;
        proto = mld_be16(p);
        p += 2;
    }
    if (proto == 0x0021)
        return mld_parse_ip(p, end, 4, pkt);
    if (proto == 0x0057)
        return mld_parse_ip(p, end, 6, pkt);
    return MLD_PARSE_NOT_IP;
}

/* Cisco HDLC: address (0x0F unicast, 0x8F broadcast), control, then an ethertype. */
static inline int mld_parse_chdlc(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    if (p + 4 > end)
        return MLD_PARSE_TRUNCATED;
    return mld_parse_ethertype(p + 4, end, mld_be16(p + 2), pkt);
}

/* BSD loopback: a 4-byte address family in the writer's byte order (DLT_NULL) or network
 * order (DLT_LOOP); either is accepted. AF_INET6 differs by OS: 10, 24, 28, 30. */
static inline int mld_parse_null(const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    __u32 fam;

    if (p + 4 > end)
        return MLD_PARSE_TRUNCATED;
    fam = (__u32)p[0] | ((__u32)p[1] << 8) | ((__u32)p[2] << 16) | ((__u32)p[3] << 24);
    if (fam > 0xFFFF)
        fam = __builtin_bswap32(fam);
    if (fam == 2)
        return mld_parse_ip(p + 4, end, 4, pkt);
    if (fam == 10 || fam == 24 || fam == 28 || fam == 30)
        return mld_parse_ip(p + 4, end, 6, pkt);
    return MLD_PARSE_NOT_IP;
}

/* Parse one captured packet of link type dlt (assumed supported) into pkt. */
static inline int mld_parse_link(int dlt, const __u8 *p, const __u8 *end, struct mld_pkt *pkt)
{
    switch (dlt) {
    case DLT_EN10MB:
        return mld_parse_eth(p, end, pkt);
    case DLT_RAW:
        return mld_parse_ip(p, end, 0, pkt);
    case DLT_IPV4:
        return mld_parse_ip(p, end, 4, pkt);
    case DLT_IPV6:
        return mld_parse_ip(p, end, 6, pkt);
    case DLT_LINUX_SLL: /* type, ARPHRD, addr len, addr[8], protocol */
        if (p + 16 > end)
            return MLD_PARSE_TRUNCATED;
        return mld_parse_vlan_ethertype(p + 16, end, mld_be16(p + 14), pkt);
    case DLT_LINUX_SLL2: /* protocol, reserved, ifindex, ARPHRD, type, addr len, addr[8] */
        if (p + 20 > end)
            return MLD_PARSE_TRUNCATED;
        return mld_parse_vlan_ethertype(p + 20, end, mld_be16(p), pkt);
    case DLT_NULL:
    case DLT_LOOP:
        return mld_parse_null(p, end, pkt);
    case DLT_PPP_WITH_DIR: /* one direction byte, then PPP */
        if (p + 1 > end)
            return MLD_PARSE_TRUNCATED;
        return mld_parse_ppp(p + 1, end, pkt);
    case DLT_PPP_SERIAL: /* RFC 1662 PPP in HDLC framing, or Cisco HDLC */
        if (p + 1 > end)
            return MLD_PARSE_TRUNCATED;
        if (p[0] == 0x0F || p[0] == 0x8F)
            return mld_parse_chdlc(p, end, pkt);
        return mld_parse_ppp(p, end, pkt);
    case DLT_PPP:
        return mld_parse_ppp(p, end, pkt);
    case DLT_C_HDLC:
        return mld_parse_chdlc(p, end, pkt);
    case DLT_PPP_ETHER: /* PPPoE session header (6 bytes), then the PPP protocol */
        if (p + 6 > end)
            return MLD_PARSE_TRUNCATED;
        return mld_parse_ppp(p + 6, end, pkt);
    default:
        return MLD_PARSE_NOT_IP;
    }
}

#endif /* MLD_LINK_LAYER_H */
