/* xdp/flow_monitor.bpf.c — ML Defender's XDP program: blocklist, flow table, flow export.
 *
 * Compiled by BCC (xdp/monitor.py) with -I<xdp dir>. Per packet:
 *   1. parse the Ethernet, VLAN and IPv4/IPv6 headers with mld_parse_eth_hdr (flow.h);
 *      non-IP frames are counted and passed;
 *   2. as soon as the IP header gave the source address, look it up in the blocklist LPM
 *      trie (pinned, shared with the firewall): a hit on an entry that has not expired
 *      (struct mld_block, CLOCK_BOOTTIME) bumps the entry's counter and drops the packet,
 *      whatever follows the IP header; it never enters the flow table; an expired entry is
 *      ignored (user space deletes it);
 *   2b. with MLD_RPF=1 (sniffer.capture.reverse_path_check: strict), drop a packet whose
 *      source the kernel's FIB would not route back out of the interface it came in on
 *      (bpf_fib_lookup, as strict rp_filter, RFC 3704), or would not route at all;
 *   3. parse the rest (IPv6 extension headers, fragments, transport header, DNS) with
 *      mld_parse_ip_rest; a packet the parser cannot follow (truncated, malformed, bad
 *      length, too many extension headers) is counted by reason and dropped, or passed
 *      when built with MLD_PARSE_ERROR_DROP=0 (sniffer.capture.parse_error_action: pass);
 *   4. create or update the packet's flow in the LRU hash `flows` with flow.h's rules and
 *      export finished flows (FIN, RST, idle/active timeout noticed on a packet) to the ring
 *      buffer `events` as struct mld_flow_event; a flow that goes on is also exported every
 *      interim_ns (config) as an interim record (MLD_F_INTERIM, the entry stays).
 *   4b. overload mode (struct mld_overload_config, off unless user space enables it): a
 *      new flow is counted in a per-window counter; too many new flows in a window, a ring
 *      buffer backlog over ringbuf_high or a nearly full table (entries = inserted - deleted
 *      - user_deleted - evicted) start overload for hold_ns. While overloaded, a new flow
 *      whose source has not yet made admit_after new flows (an LRU hash of sources) gets no
 *      entry: it is added to the flood summaries `floods` of its destination (address,
 *      port, protocol) and of its source prefix, which user space drains into flood
 *      records (sniffer/overload.py); a new flow that starts with a SYN-ACK, RST or ACK
 *      (the victim's answers to forged sources) to the summary of the answering address
 *      and port, and never earns its source admission. A flow with an entry, and the new flows of a source
 *      that keeps sending (a scanner, a real client), keep the per-flow path. Forged
 *      random sources never repeat, so a forged flood is summarised and the rest is not.
 * User space sweeps flows that stopped receiving packets (idle timeout) and flushes the table
 * on exit; this program only sees flows when they get a packet.
 *
 * Limits: LRU hash maps do not allow bpf_spin_lock, so two CPUs updating one flow at the
 * same instant can lose an increment; when the table is full the kernel evicts the least
 * recently used flow without telling anyone: user space finds those evictions by comparing
 * the entries its sweep walks with inserted - deleted (xdp/monitor.py, `evicted`), and
 * overload mode keeps the table from filling under a flood of new flows.
 *
 * Build-time knobs (-D): MLD_MAX_FLOWS, MLD_RINGBUF_PAGES, MLD_BLOCKLIST_MAX,
 * MLD_BLOCKLIST_PIN (a string literal: the bpffs path of the blocklist map),
 * MLD_PARSE_ERROR_DROP (1: drop packets the parser cannot follow, the default; 0: pass),
 * MLD_RPF (1: strict reverse-path check; 0: none, the default), MLD_FLOOD_MAX (flood
 * summaries held between two drains), MLD_SRC_SEEN_MAX (sources remembered in overload).
 */
#define MLD_BPF 1
#include "flow.h" /* flow_types.h, flow_parse.h, flow_update.h */

#ifndef MLD_MAX_FLOWS
#define MLD_MAX_FLOWS 65536
#endif
#ifndef MLD_RINGBUF_PAGES
#define MLD_RINGBUF_PAGES 256
#endif
#ifndef MLD_BLOCKLIST_MAX
#define MLD_BLOCKLIST_MAX 65536
#endif
#ifndef MLD_PARSE_ERROR_DROP
#define MLD_PARSE_ERROR_DROP 1
#endif
#ifndef MLD_RPF
#define MLD_RPF 0
#endif
#ifndef MLD_FLOOD_MAX
#define MLD_FLOOD_MAX 65536
#endif
#ifndef MLD_SRC_SEEN_MAX
#define MLD_SRC_SEEN_MAX 65536
#endif
#ifndef MLD_BLOCKLIST_PIN
#define MLD_BLOCKLIST_PIN "/sys/fs/bpf/mld/blocklist"
#endif

BPF_TABLE("lru_hash", struct mld_flow_key, struct mld_flow_state, flows, MLD_MAX_FLOWS);
/* Timeouts, written by user space after load (index 0). */
BPF_ARRAY(config, struct mld_flow_config, 1);
BPF_PERCPU_ARRAY(stats, struct mld_xdp_stats, 1);
/* A new flow is built here, not on the 512-byte stack; its type also gives user space the
 * layout of struct mld_flow_event. */
BPF_PERCPU_ARRAY(scratch, struct mld_flow_event, 1);
BPF_RINGBUF_OUTPUT(events, MLD_RINGBUF_PAGES);
/* The parsed packet. In a map rather than on the stack so that the verifier does not carry
 * what each parser path wrote into the flow update: every path then reaches the update in
 * the same state and is checked once (on the stack the program passed the verifier's
 * one-million-instruction limit). */
BPF_PERCPU_ARRAY(parsed, struct mld_pkt, 1);
/* Overload mode: settings (user space), kernel-side state, user-side entry accounting. */
BPF_ARRAY(ovl_config, struct mld_overload_config, 1);
BPF_ARRAY(ovl_state, struct mld_overload_state, 1);
BPF_ARRAY(ovl_user, struct mld_overload_user, 1);
/* Flood summaries: a plain hash, so a full map refuses (counted) instead of evicting. */
BPF_TABLE("hash", struct mld_flood_key, struct mld_flood_stats, floods, MLD_FLOOD_MAX);
/* New flows per source during overload (key prefixlen 128 and the address). */
BPF_TABLE("lru_hash", struct mld_lpm_key, __u64, src_seen, MLD_SRC_SEEN_MAX);
/* Source prefixes to drop, with drop counter and expiry. Reuses a pinned map. */
BPF_TABLE_PINNED("lpm_trie", struct mld_lpm_key, struct mld_block, blocklist, MLD_BLOCKLIST_MAX,
                 MLD_BLOCKLIST_PIN, BPF_F_NO_PREALLOC);

/* Count a parse error by reason; the verdict parse_error_action gives it. */
static __always_inline int mld_parse_error(int rc, struct mld_xdp_stats *s)
{
    s->parse_errors += 1;
    if (rc == MLD_PARSE_TRUNCATED)
        s->parse_truncated += 1;
    else if (rc == MLD_PARSE_BAD_LENGTH)
        s->parse_bad_length += 1;
    else if (rc == MLD_PARSE_EXT_LIMIT)
        s->parse_ext_limit += 1;
    else
        s->parse_malformed += 1;
#if MLD_PARSE_ERROR_DROP
    s->parse_dropped += 1;
    return XDP_DROP;
#else
    return XDP_PASS;
#endif
}

#if MLD_RPF
/* Strict reverse-path check: may a packet from pkt->saddr arrive on this interface? Yes
 * when the FIB's route back to the source leaves by the interface the packet came in on.
 * No when it leaves by another one (a source of another network forged on this link), when
 * there is no route back (blackhole, unreachable, prohibit), or when the source is one of
 * this host's own addresses (only forged packets arrive "from" it). Undecided, so passed:
 * unspecified, link-local and multicast sources, and an interface without forwarding (the
 * helper only answers for a router). The lookup leaves the source of the route back
 * unset: IPv6 refuses a link-local or multicast one (neighbour discovery's destinations),
 * and the check is about the way back to the sender only. */
static __always_inline int mld_rpf_ok(struct xdp_md *ctx, const struct mld_pkt *pkt)
{
    struct bpf_fib_lookup fib = {};
    const __u8 *a = pkt->saddr;
    __u32 w[4];
    int rc;

    if (pkt->ip_version == 4) {
        if ((a[12] | a[13] | a[14] | a[15]) == 0 || (a[12] & 0xF0) == 0xE0)
            return 1;
        fib.family = 2; /* AF_INET */
        __builtin_memcpy(&fib.ipv4_dst, a + 12, 4);
    } else {
        __builtin_memcpy(w, a, 16);
        if ((w[0] | w[1] | w[2] | w[3]) == 0) /* ::, duplicate address detection */
            return 1;
        if (a[0] == 0xFF || (a[0] == 0xFE && (a[1] & 0xC0) == 0x80))
            return 1;
        fib.family = 10; /* AF_INET6 */
        __builtin_memcpy(fib.ipv6_dst, a, 16);
    }
    fib.ifindex = ctx->ingress_ifindex;
    rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
    if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
        return fib.ifindex == ctx->ingress_ifindex;
    if (rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE ||
        rc == BPF_FIB_LKUP_RET_PROHIBIT || rc == BPF_FIB_LKUP_RET_NOT_FWDED)
        return 0;
    return 1;
}
#endif

/* Copy a flow into the ring buffer: a final one (extra_flags 0), or an interim record of a
 * flow that goes on (extra_flags MLD_F_INTERIM, set on the copy only). */
static __always_inline void mld_export(const struct mld_flow_key *key,
                                       const struct mld_flow_state *st,
                                       struct mld_xdp_stats *s, __u32 extra_flags)
{
    int zero = 0;
    struct mld_overload_state *ovl = ovl_state.lookup(&zero);
    struct mld_flow_event *e = events.ringbuf_reserve(sizeof(struct mld_flow_event));

    if (!e) {
        s->ringbuf_drops += 1;
        if (extra_flags)
            s->interim_dropped += 1;
        return;
    }
    __builtin_memcpy(&e->key, key, sizeof(struct mld_flow_key));
    __builtin_memcpy(&e->state, st, sizeof(struct mld_flow_state));
    e->state.flags |= extra_flags;
    events.ringbuf_submit(e, 0);
    if (ovl)
        __sync_fetch_and_add(&ovl->submitted, 1);
    if (extra_flags)
        s->interim_exported += 1;
    else
        s->flows_exported += 1;
}

/* Add one summarised flow (its first packet) to the summary `fk`; 0 when the map is full. */
static __always_inline int mld_flood_add(const struct mld_flood_key *fk, const struct mld_pkt *pkt)
{
    struct mld_flood_stats *v = floods.lookup((struct mld_flood_key *)fk);

    if (!v) {
        struct mld_flood_stats init = {};

        init.first_ts_ns = pkt->ts_ns;
        init.last_ts_ns = pkt->ts_ns;
        floods.insert((struct mld_flood_key *)fk, &init); /* fails when full or raced */
        v = floods.lookup((struct mld_flood_key *)fk);
        if (!v)
            return 0;
    }
    __sync_fetch_and_add(&v->flows, 1);
    __sync_fetch_and_add(&v->packets, 1);
    __sync_fetch_and_add(&v->bytes, (__u64)pkt->ip_len);
    if ((pkt->tcp_flags & (MLD_TCP_SYN | MLD_TCP_ACK)) == MLD_TCP_SYN &&
        pkt->protocol == MLD_PROTO_TCP)
        __sync_fetch_and_add(&v->syn, 1);
    if (pkt->ts_ns > v->last_ts_ns)
        v->last_ts_ns = pkt->ts_ns;
    if (pkt->ts_ns < v->first_ts_ns)
        v->first_ts_ns = pkt->ts_ns;
    return 1;
}

/* Summarise a new flow: its destination's summary (the accounting record: a flow that cannot
 * be added there is counted as summary_lost) and its source prefix's. */
static __always_inline void mld_summarise(const struct mld_pkt *pkt,
                                          const struct mld_overload_config *oc,
                                          struct mld_xdp_stats *s)
{
    struct mld_flood_key fk = {};
    __u32 plen, bits;
    int i;

    s->flows_summarised += 1;
    __builtin_memcpy(fk.addr, pkt->daddr, 16);
    fk.port = pkt->dport;
    fk.protocol = pkt->protocol;
    fk.kind = MLD_FLOOD_DST;
    fk.prefix_len = 128;
    fk.ip_version = pkt->ip_version;
    fk.gen = oc->gen;
    if (!mld_flood_add(&fk, pkt))
        s->summary_lost += 1;

    plen = pkt->ip_version == 4 ? 96 + (__u32)oc->src_prefix4 : (__u32)oc->src_prefix6;
    if (plen > 128)
        plen = 128;
    fk.port = 0;
    fk.kind = MLD_FLOOD_SRC;
    fk.prefix_len = (__u8)plen;
#pragma unroll
    for (i = 0; i < 16; i++) {
        bits = (__u32)i * 8;
        if (bits + 8 <= plen)
            fk.addr[i] = pkt->saddr[i];
        else if (bits < plen)
            fk.addr[i] = pkt->saddr[i] & (__u8)(0xFF << (8 - (plen - bits)));
        else
            fk.addr[i] = 0;
    }
    if (!mld_flood_add(&fk, pkt))
        s->src_summary_lost += 1;
}

/* Summarise a new flow that answers (a SYN-ACK, RST or ACK first): per replying address
 * and port, so a victim's backscatter to a million forged sources is one summary. */
static __always_inline void mld_summarise_reply(const struct mld_pkt *pkt,
                                                const struct mld_overload_config *oc,
                                                struct mld_xdp_stats *s)
{
    struct mld_flood_key fk = {};

    s->flows_summarised += 1;
    __builtin_memcpy(fk.addr, pkt->saddr, 16);
    fk.port = pkt->sport;
    fk.protocol = pkt->protocol;
    fk.kind = MLD_FLOOD_REPLY;
    fk.prefix_len = 128;
    fk.ip_version = pkt->ip_version;
    fk.gen = oc->gen;
    if (!mld_flood_add(&fk, pkt))
        s->summary_lost += 1;
}

/* Is the program overloaded, and is this new flow to be summarised rather than given an
 * entry? Counts the new flow in the window and (re)starts overload on a trigger. */
static __always_inline int mld_overload(const struct mld_pkt *pkt, struct mld_xdp_stats *s)
{
    struct mld_overload_config *oc;
    struct mld_overload_state *os;
    struct mld_overload_user *ou;
    struct mld_lpm_key sk = {};
    __u64 now = pkt->ts_ns, n, one = 1, *seen;
    __s64 entries;
    int zero = 0, why = 0;

    oc = ovl_config.lookup(&zero);
    os = ovl_state.lookup(&zero);
    ou = ovl_user.lookup(&zero);
    if (!oc || !os || !ou || !oc->enabled)
        return 0;
    if (now - os->window_start_ns >= oc->window_ns) { /* a new window (racy reset: benign) */
        os->window_start_ns = now;
        os->window_new = 0;
    }
    n = __sync_fetch_and_add(&os->window_new, 1) + 1;
    if (oc->max_new_flows && n > oc->max_new_flows) {
        why = 1;
    } else if (oc->ringbuf_high && os->submitted - ou->consumed >= oc->ringbuf_high) {
        why = 2;
    } else if (oc->table_high) {
        entries = (__s64)(os->inserted - os->deleted - ou->user_deleted - ou->evicted);
        if (entries >= (__s64)oc->table_high)
            why = 3;
    }
    if (why) {
        if (now >= os->until_ns) { /* overload begins */
            if (why == 1)
                s->overload_by_rate += 1;
            else if (why == 2)
                s->overload_by_ringbuf += 1;
            else
                s->overload_by_table += 1;
        }
        os->until_ns = now + oc->hold_ns;
    }
    if (now >= os->until_ns)
        return 0;
    /* Only a packet that opens a conversation (TCP SYN without ACK; UDP, ICMP and the
     * rest) counts toward its source's admission: a SYN-ACK, RST or ACK that starts a new
     * flow in overload answers a flow that was summarised (the victim's replies to forged
     * sources, its backscatter), or is the middle of a connection, and is summarised. */
    if (pkt->protocol == MLD_PROTO_TCP &&
        (pkt->tcp_flags & (MLD_TCP_SYN | MLD_TCP_ACK | MLD_TCP_RST)) != MLD_TCP_SYN) {
        mld_summarise_reply(pkt, oc, s);
        return 1;
    }
    if (oc->admit_after) {
        sk.prefixlen = 128;
        __builtin_memcpy(sk.addr, pkt->saddr, 16);
        seen = src_seen.lookup(&sk);
        if (seen) {
            if (__sync_fetch_and_add(seen, 1) + 1 > oc->admit_after) {
                s->overload_admitted += 1;
                return 0;
            }
        } else {
            src_seen.update(&sk, &one);
        }
    }
    mld_summarise(pkt, oc, s);
    return 1;
}

int xdp_flow_monitor(struct xdp_md *ctx)
{
    const __u8 *data = (const __u8 *)(long)ctx->data;
    const __u8 *end = (const __u8 *)(long)ctx->data_end;
    const __u8 *ip = data;
    struct mld_pkt *pkt;
    struct mld_lpm_key lk = {};
    struct mld_flow_event *fresh;
    struct mld_flow_config *cfg;
    struct mld_flow_state *st;
    struct mld_overload_state *ovl;
    struct mld_xdp_stats *s;
    struct mld_block *blk;
    int zero = 0;
    int rc, lo, act;

    s = stats.lookup(&zero);
    if (!s)
        return XDP_PASS;
    s->packets += 1;
    s->bytes += (__u64)(end - data);

    pkt = parsed.lookup(&zero);
    if (!pkt)
        return XDP_PASS;
    __builtin_memset(pkt, 0, sizeof(*pkt));
    pkt->ts_ns = bpf_ktime_get_ns();
    rc = mld_parse_eth_hdr(data, end, pkt, &ip);
    if (rc == MLD_PARSE_NOT_IP) {
        s->non_ip += 1;
        return XDP_PASS;
    }
    if (rc != MLD_PARSE_OK)
        return mld_parse_error(rc, s);

    lk.prefixlen = 128;
    __builtin_memcpy(lk.addr, pkt->saddr, 16);
    blk = blocklist.lookup(&lk);
    /* The clock is read only on a hit. An expired entry passes the packet even where a
     * shorter live prefix also matches: the trie returns the longest match only. */
    if (blk &&
        (blk->expires_ns == MLD_BLOCK_NEVER || bpf_ktime_get_boot_ns() < blk->expires_ns)) {
        __sync_fetch_and_add(&blk->drops, 1);
        s->blocked_packets += 1;
        s->blocked_bytes += (__u64)(end - data);
        return XDP_DROP;
    }
#if MLD_RPF
    if (!mld_rpf_ok(ctx, pkt)) {
        s->rpf_dropped += 1;
        return XDP_DROP;
    }
#endif

    rc = mld_parse_ip_rest(ip, end, pkt);
    if (rc != MLD_PARSE_OK)
        return mld_parse_error(rc, s);
    if (pkt->frag & MLD_FRAG_IS) {
        s->fragments += 1;
        if (pkt->frag & MLD_FRAG_TINY)
            s->tiny_fragments += 1;
    }

    cfg = config.lookup(&zero);
    fresh = scratch.lookup(&zero);
    if (!cfg || !fresh)
        return XDP_PASS;
    lo = mld_flow_key(pkt, &fresh->key);

    ovl = ovl_state.lookup(&zero);
    if (!ovl)
        return XDP_PASS;
    st = flows.lookup(&fresh->key);
    if (!st) {
        if (mld_overload(pkt, s))
            return XDP_PASS; /* summarised */
        s->flows_created += 1;
        if (mld_flow_init(&fresh->state, pkt, lo) == MLD_ACT_EXPORT) {
            mld_export(&fresh->key, &fresh->state, s, 0); /* a lone RST: never stored */
            return XDP_PASS;
        }
        if (flows.insert(&fresh->key, &fresh->state) == 0) {
            __sync_fetch_and_add(&ovl->inserted, 1);
            return XDP_PASS;
        }
        /* Another CPU created the flow since our lookup: apply the packet to its entry. */
        s->flows_created -= 1;
        st = flows.lookup(&fresh->key);
        if (!st)
            return XDP_PASS;
    }

    act = mld_flow_update(st, pkt, lo, cfg);
    if (act == MLD_ACT_INTERIM) {
        mld_export(&fresh->key, st, s, MLD_F_INTERIM);
        return XDP_PASS;
    }
    if (act == MLD_ACT_RESTART) {
        mld_export(&fresh->key, st, s, 0);
        s->flows_created += 1;
        act = mld_flow_init(st, pkt, lo);
    }
    if (act == MLD_ACT_EXPORT) {
        mld_export(&fresh->key, st, s, 0);
        if (flows.delete(&fresh->key) == 0)
            __sync_fetch_and_add(&ovl->deleted, 1);
    }
    return XDP_PASS;
}
