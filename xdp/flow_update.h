/* xdp/flow_update.h — flow keys, flow state update and the export rules.
 *
 * Given a parsed packet (struct mld_pkt), mld_flow_key() makes its canonical key, and
 * mld_flow_init() and mld_flow_update() start or advance the flow's state and say when the
 * flow ends (RST, FINs both ways, idle and active timeouts) or when an interim record of a
 * flow that goes on is due (mld_interim_due); mld_flow_idle() and
 * mld_idle_reason() are the sweepers' rules. The XDP program and native/'s offline engine
 * both call these, so a capture replayed offline and the same traffic seen live give the
 * same counters. Nothing here may use libc or BPF helpers directly.
 *
 * Handshake evidence (mld_handshake): a flow's initiator is marked MLD_F_HS_VERIFIED when it
 * acknowledged the responder's initial sequence number: its SYN (ISN i) drew a SYN-ACK
 * acknowledging i + 1 (ISN r), and its first ACK after that acknowledges exactly r + 1. A
 * sender with a forged source address never receives the SYN-ACK, so it cannot know r: it
 * gets one guess in 2^32 per flow, because the first ACK decides (a wrong one voids the
 * evidence, MLD_F_HS_CONFLICT). Two SYNs or two SYN-ACKs that disagree (a forger injecting
 * its own SYN-ACK "from" the responder next to the real one) also void it. Only a sender
 * that sees the responder's replies can pass, which is what "the address is its own"
 * means; the firewall blocks on nothing weaker by default (firewall/policy.py).
 */
#ifndef MLD_FLOW_UPDATE_H
#define MLD_FLOW_UPDATE_H

#include "flow_types.h"

/* What the caller must do after mld_flow_update(). */
#define MLD_ACT_NONE 0          /* keep the flow */
#define MLD_ACT_EXPORT 1        /* the state is final (this packet included): export, delete */
#define MLD_ACT_RESTART 2       /* the state is an older flow, final, without this packet:
                                   export it, then mld_flow_init() with this packet */
#define MLD_ACT_INTERIM 3       /* the flow goes on (this packet included): export a copy of
                                   the state with MLD_F_INTERIM set, keep the flow */

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

/* Count a fragment. Overlaps are found against one contiguous byte range of the latest
 * fragmented datagram: a fragment of the same id that starts or ends inside it overlaps
 * (or repeats) bytes already seen; one next to it extends it; anything else (another
 * datagram, a gap) starts a new range. In-order and reverse-order overlaps are seen;
 * out-of-order ones across a gap, and overlaps between a first fragment (in the ports'
 * flow) and a later one (in the ports-0 flow), are not. */
MLD_INLINE void mld_frag_add(struct mld_flow_state *st, const struct mld_pkt *pkt)
{
    int known = st->frag_count != 0 && st->frag_id == pkt->frag_id;

    if (!(pkt->frag & MLD_FRAG_IS))
        return;
    st->frag_count += 1;
    if (pkt->frag & MLD_FRAG_TINY)
        st->tiny_frag_count += 1;
    if (known && pkt->frag_off < st->frag_hi && pkt->frag_end > st->frag_lo) {
        st->overlap_frag_count += 1;
    } else if (!(known && (pkt->frag_off == st->frag_hi || pkt->frag_end == st->frag_lo))) {
        st->frag_id = pkt->frag_id;
        st->frag_lo = pkt->frag_off;
        st->frag_hi = pkt->frag_end;
        return;
    }
    if (pkt->frag_off < st->frag_lo)
        st->frag_lo = pkt->frag_off;
    if (pkt->frag_end > st->frag_hi)
        st->frag_hi = pkt->frag_end;
}

/* The handshake evidence of one TCP packet (see the header comment). fwd: the packet goes
 * initiator -> responder; first: it is the flow's first packet. */
MLD_INLINE void mld_handshake(struct mld_flow_state *st, const struct mld_pkt *pkt, int fwd,
                              int first)
{
    __u8 f = pkt->tcp_flags & (MLD_TCP_SYN | MLD_TCP_ACK | MLD_TCP_RST);

    if (pkt->protocol != MLD_PROTO_TCP || !pkt->has_l4 || (st->flags & MLD_F_HS_CONFLICT))
        return;
    if (fwd && f == MLD_TCP_SYN) {
        if (first) {
            st->flags |= MLD_F_INIT_SYN;
            st->init_isn = pkt->tcp_seq;
        } else if (!(st->flags & MLD_F_INIT_SYN) || pkt->tcp_seq != st->init_isn) {
            st->flags |= MLD_F_HS_CONFLICT; /* a retransmitted SYN keeps its ISN */
        }
    } else if (!fwd && f == (MLD_TCP_SYN | MLD_TCP_ACK)) {
        if (!(st->flags & MLD_F_INIT_SYN) || pkt->tcp_ack != st->init_isn + 1)
            return; /* not an answer to the initiator's SYN */
        if (!(st->flags & MLD_F_SYNACK)) {
            st->flags |= MLD_F_SYNACK;
            st->resp_isn = pkt->tcp_seq;
        } else if (pkt->tcp_seq != st->resp_isn) {
            st->flags |= MLD_F_HS_CONFLICT; /* a retransmitted SYN-ACK keeps its ISN */
        }
    } else if (fwd && f == MLD_TCP_ACK && (st->flags & MLD_F_SYNACK) &&
               !(st->flags & MLD_F_HS_VERIFIED)) {
        /* The initiator's first ACK after the SYN-ACK decides: one guess per flow. */
        st->flags |= pkt->tcp_ack == st->resp_isn + 1 ? MLD_F_HS_VERIFIED : MLD_F_HS_CONFLICT;
    }
    if (st->flags & MLD_F_HS_CONFLICT)
        st->flags &= ~(__u32)MLD_F_HS_VERIFIED;
}

/* Add a packet to a flow and note FIN/RST; returns MLD_ACT_EXPORT when it ends the flow. */
MLD_INLINE int mld_flow_add(struct mld_flow_state *st, const struct mld_pkt *pkt, int src_lo)
{
    int fwd = (src_lo != 0) == ((st->flags & MLD_F_INITIATOR_LO) != 0);
    int closing = (st->flags & (MLD_F_FIN_FWD | MLD_F_FIN_BWD)) ==
                  (MLD_F_FIN_FWD | MLD_F_FIN_BWD);

    mld_handshake(st, pkt, fwd, st->dir[0].packets == 0 && st->dir[1].packets == 0);
    mld_dir_add(&st->dir[fwd ? 0 : 1], pkt);
    mld_frag_add(st, pkt);
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

/* Is an interim record of a flow that goes on due at time now_ns? Interim records come
 * cfg->interim_ns after the flow's first packet, then that long after the previous interim
 * record, each on the first packet at or past that time (so a flow that gets no packet
 * gets no interim record: it is the idle sweep's to export). Driven by packet times, as
 * every rule here, so the XDP program and the offline engine cut the same records. */
MLD_INLINE int mld_interim_due(const struct mld_flow_state *st, __u64 now_ns,
                               const struct mld_flow_config *cfg)
{
    __u64 since = st->interim_ts_ns ? st->interim_ts_ns : st->first_ts_ns;

    return cfg->interim_ns != 0 && now_ns >= since && now_ns - since >= cfg->interim_ns;
}

/* Apply a packet to an existing flow. Returns:
 *   MLD_ACT_RESTART  the flow had already ended before this packet (idle or active timeout,
 *                    or a new SYN after both FINs): st holds the old flow with end_reason
 *                    set; export it, then mld_flow_init() with this packet;
 *   MLD_ACT_EXPORT   this packet ends the flow (RST, or the last ACK after both FINs);
 *   MLD_ACT_INTERIM  the flow goes on and an interim record is due (mld_interim_due): export
 *                    a copy of st with MLD_F_INTERIM set in its flags, keep st;
 *   MLD_ACT_NONE     keep going. */
MLD_INLINE int mld_flow_update(struct mld_flow_state *st, const struct mld_pkt *pkt,
                               int src_lo, const struct mld_flow_config *cfg)
{
    __u32 both = MLD_F_FIN_FWD | MLD_F_FIN_BWD;
    int act;

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
    act = mld_flow_add(st, pkt, src_lo);
    if (act == MLD_ACT_NONE && mld_interim_due(st, pkt->ts_ns, cfg)) {
        st->interim_ts_ns = pkt->ts_ns;
        return MLD_ACT_INTERIM;
    }
    return act;
}

#endif /* MLD_FLOW_UPDATE_H */
