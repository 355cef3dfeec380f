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
 * User space sweeps flows that stopped receiving packets (idle timeout) and flushes the table
 * on exit; this program only sees flows when they get a packet.
 *
 * Limits: LRU hash maps do not allow bpf_spin_lock, so two CPUs updating one flow at the
 * same instant can lose an increment; when the table is full the kernel evicts the least
 * recently used flow silently (flows_created - flows_exported - swept - live = evicted).
 *
 * Build-time knobs (-D): MLD_MAX_FLOWS, MLD_RINGBUF_PAGES, MLD_BLOCKLIST_MAX,
 * MLD_BLOCKLIST_PIN (a string literal: the bpffs path of the blocklist map),
 * MLD_PARSE_ERROR_DROP (1: drop packets the parser cannot follow, the default; 0: pass),
 * MLD_RPF (1: strict reverse-path check; 0: none, the default).
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
    struct mld_flow_event *e = events.ringbuf_reserve(sizeof(struct mld_flow_event));

    if (!e) {
        s->ringbuf_drops += 1;
        return;
    }
    __builtin_memcpy(&e->key, key, sizeof(struct mld_flow_key));
    __builtin_memcpy(&e->state, st, sizeof(struct mld_flow_state));
    e->state.flags |= extra_flags;
    events.ringbuf_submit(e, 0);
    if (extra_flags)
        s->interim_exported += 1;
    else
        s->flows_exported += 1;
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

    st = flows.lookup(&fresh->key);
    if (!st) {
        s->flows_created += 1;
        if (mld_flow_init(&fresh->state, pkt, lo) == MLD_ACT_EXPORT) {
            mld_export(&fresh->key, &fresh->state, s, 0); /* a lone RST: never stored */
            return XDP_PASS;
        }
        if (flows.insert(&fresh->key, &fresh->state) == 0)
            return XDP_PASS;
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
        flows.delete(&fresh->key);
    }
    return XDP_PASS;
}
