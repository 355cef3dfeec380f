/* native/engine.c — pcap packets through xdp/flow_parse.h and xdp/flow_update.h into
 * exported flows.
 *
 * Export rules are flow_update.h's, driven by packet timestamps: before each packet, flows
 * idle at the packet's time are exported from the LRU head with mld_idle_reason(); then the
 * packet is applied with mld_flow_init()/mld_flow_update() and MLD_ACT_* handled as in the
 * XDP program (MLD_ACT_INTERIM: a copy of the state flagged MLD_F_INTERIM is exported and
 * the flow goes on); a full table evicts its least recently seen flow (MLD_END_EVICTED).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "flow_update.h"
#include "link_layer.h"

int mld_engine_init(struct mld_engine *e, const struct mld_flow_config *cfg, __u32 max_flows,
                    size_t batch_size)
{
    memset(e, 0, sizeof(*e));
    e->cfg = *cfg;
    e->batch_size = batch_size;
    /* Room for a whole batch plus the two exports one packet can cause. */
    e->out_cap = batch_size + 2;
    e->out = malloc(e->out_cap * sizeof(*e->out));
    if (e->out == NULL)
        return -1;
    if (mld_table_init(&e->table, max_flows) != 0) {
        free(e->out);
        e->out = NULL;
        return -1;
    }
    return 0;
}

void mld_engine_free(struct mld_engine *e)
{
    if (e->pcap != NULL)
        pcap_close(e->pcap);
    e->pcap = NULL;
    free(e->iobuf);
    e->iobuf = NULL;
    free(e->rbuf);
    e->rbuf = NULL;
    e->fast = 0;
    mld_table_free(&e->table);
    free(e->out);
    e->out = NULL;
    e->out_n = 0;
}

/* Append one event, growing out only beyond its preallocated room (finish, close). */
static int emit(struct mld_engine *e, const struct mld_flow_key *key,
                const struct mld_flow_state *st, int interim)
{
    struct mld_flow_event *ev;

    if (e->out_n == e->out_cap) {
        size_t cap = e->out_cap * 2;
        struct mld_flow_event *n = realloc(e->out, cap * sizeof(*n));

        if (n == NULL)
            return -1;
        e->out = n;
        e->out_cap = cap;
    }
    ev = &e->out[e->out_n++];
    ev->key = *key;
    ev->state = *st;
    if (!interim)
        e->stats.flows_exported++;
    return 0;
}

/* Export a live flow with the given end reason (0 keeps the one set) and remove it. */
static int export_node(struct mld_engine *e, __u32 idx, __u8 reason)
{
    struct mld_node *n = &e->table.nodes[idx];

    if (reason != 0)
        n->state.end_reason = reason;
    if (emit(e, &n->key, &n->state, 0) != 0)
        return -1;
    mld_table_remove(&e->table, idx);
    return 0;
}

/* Export flows idle at time now from the LRU head, while out has fewer than limit events.
 * Returns 1 when it stopped because out is full, -1 when out of memory. */
static int expire_idle(struct mld_engine *e, __u64 now, size_t limit)
{
    struct mld_table *t = &e->table;

    while (t->lru_head != MLD_NIL && mld_flow_idle(&t->nodes[t->lru_head].state, now, &e->cfg)) {
        if (e->out_n >= limit)
            return 1;
        if (export_node(e, t->lru_head, mld_idle_reason(&t->nodes[t->lru_head].state)) != 0)
            return -1;
    }
    return 0;
}

/* Apply one parsed IP packet to the table (at most two exports). */
static int apply(struct mld_engine *e, const struct mld_pkt *pkt)
{
    struct mld_table *t = &e->table;
    struct mld_flow_key key;
    struct mld_flow_state st;
    int src_lo = mld_flow_key(pkt, &key);
    __u64 hash = mld_key_hash(t, &key);
    __u32 idx = mld_table_find(t, &key, hash);
    int act;

    if (idx != MLD_NIL) {
        struct mld_node *n = &t->nodes[idx];

        act = mld_flow_update(&n->state, pkt, src_lo, &e->cfg);
        if (act == MLD_ACT_NONE) {
            mld_table_touch(t, idx);
            return 0;
        }
        if (act == MLD_ACT_INTERIM) {
            struct mld_flow_state copy = n->state;

            mld_table_touch(t, idx);
            copy.flags |= MLD_F_INTERIM;
            e->stats.interim_exported++;
            return emit(e, &n->key, &copy, 1);
        }
        if (act == MLD_ACT_EXPORT)
            return export_node(e, idx, 0);
        /* MLD_ACT_RESTART: the stored flow ended before this packet. */
        if (emit(e, &n->key, &n->state, 0) != 0)
            return -1;
        e->stats.flows_created++;
        if (mld_flow_init(&n->state, pkt, src_lo) == MLD_ACT_EXPORT)
            return export_node(e, idx, 0);
        mld_table_touch(t, idx);
        return 0;
    }
    e->stats.flows_created++;
    if (mld_flow_init(&st, pkt, src_lo) == MLD_ACT_EXPORT)
        return emit(e, &key, &st, 0); /* a lone RST: never stored */
    if (t->live >= t->max_flows && t->lru_head != MLD_NIL) {
        if (export_node(e, t->lru_head, MLD_END_EVICTED) != 0)
            return -1;
        e->stats.flows_evicted++;
    }
    idx = mld_table_insert(t, &key, hash);
    while (idx == MLD_NIL && t->lru_head != MLD_NIL) {
        /* Out of memory before max_flows: behave as if the table were full. */
        if (export_node(e, t->lru_head, MLD_END_EVICTED) != 0)
            return -1;
        e->stats.flows_evicted++;
        t->max_flows = t->live > 0 ? t->live : 1;
        idx = mld_table_insert(t, &key, hash);
    }
    if (idx == MLD_NIL) {
        st.end_reason = MLD_END_EVICTED;
        e->stats.flows_evicted++;
        return emit(e, &key, &st, 0);
    }
    t->nodes[idx].state = st;
    return 0;
}

/* ---- the fast path of classic pcap files ------------------------------------------------- */

#define PCAP_MAGIC_USEC 0xa1b2c3d4u
#define PCAP_MAGIC_NSEC 0xa1b23c4du
#define PCAP_FILE_HEADER 24
#define PCAP_RECORD_HEADER 16

static __u32 get_u32(const unsigned char *p, int swapped)
{
    __u32 v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

/* Read through rbuf when libpcap opened a classic pcap file of version 2.4 (pcapng, the
 * 'modified' formats and old versions stay with libpcap). f is positioned by libpcap
 * after the file header; the fast path reads with pread() from the header's end and never
 * moves f, so libpcap can take over at any record (fast_fallback). */
static void fast_start(struct mld_engine *e, FILE *f)
{
    unsigned char head[4];
    __u32 magic;
    int fd = fileno(f);

    e->fast = 0;
    if (fd < 0 || pcap_major_version(e->pcap) != 2 || pcap_minor_version(e->pcap) != 4)
        return;
    if (pread(fd, head, 4, 0) != 4)
        return;
    memcpy(&magic, head, 4);
    if (magic == PCAP_MAGIC_USEC || magic == PCAP_MAGIC_NSEC) {
        e->fast_swapped = 0;
    } else if (__builtin_bswap32(magic) == PCAP_MAGIC_USEC ||
               __builtin_bswap32(magic) == PCAP_MAGIC_NSEC) {
        e->fast_swapped = 1;
        magic = __builtin_bswap32(magic);
    } else {
        return;
    }
    if (e->fast_swapped != (pcap_is_swapped(e->pcap) == 1))
        return;
    if (pcap_snapshot(e->pcap) <= 0 || pcap_snapshot(e->pcap) > (int)(MLD_RBUF_SIZE / 2))
        return;
    if (e->rbuf == NULL)
        e->rbuf = malloc(MLD_RBUF_SIZE);
    if (e->rbuf == NULL)
        return;
    e->fast_nsec = magic == PCAP_MAGIC_NSEC;
    e->fast_snap = (__u32)pcap_snapshot(e->pcap);
    e->fast_eof = 0;
    e->rlen = e->rpos = 0;
    e->roff = PCAP_FILE_HEADER;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    e->fast = 1;
}

/* Keep the unread bytes, then fill rbuf from the file as far as it goes. */
static void fast_refill(struct mld_engine *e)
{
    int fd = fileno(pcap_file(e->pcap));

    if (e->rpos > 0) {
        memmove(e->rbuf, e->rbuf + e->rpos, e->rlen - e->rpos);
        e->roff += (long long)e->rpos;
        e->rlen -= e->rpos;
        e->rpos = 0;
    }
    while (!e->fast_eof && e->rlen < MLD_RBUF_SIZE) {
        ssize_t got = pread(fd, e->rbuf + e->rlen, MLD_RBUF_SIZE - e->rlen,
                            (off_t)(e->roff + (long long)e->rlen));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            /* The end, or an error libpcap will meet and report in its words. */
            e->fast_eof = 1;
            break;
        }
        e->rlen += (size_t)got;
    }
}

/* Hand the file to libpcap at the next record. 0, or -1 when it cannot be positioned. */
static int fast_fallback(struct mld_engine *e)
{
    FILE *f = pcap_file(e->pcap);

    e->fast = 0;
    if (fseeko(f, (off_t)(e->roff + (long long)e->rpos), SEEK_SET) != 0) {
        snprintf(e->error, sizeof(e->error), "byte offset %lld: %s",
                 e->roff + (long long)e->rpos, strerror(errno));
        return -1;
    }
    return 0;
}

/* The next record from rbuf: 1 with *h and *data set, 0 at a clean end of file, 2 when
 * libpcap must read it (anything the fast path does not vouch for: a record cut short,
 * a capture length past the snapshot, a time libpcap would read as negative). */
static int fast_next(struct mld_engine *e, struct pcap_pkthdr *h, const u_char **data)
{
    const unsigned char *r;
    __u32 sec, frac, caplen;

    if (e->rlen - e->rpos < PCAP_RECORD_HEADER) {
        fast_refill(e);
        if (e->rlen == e->rpos)
            return 0;
        if (e->rlen - e->rpos < PCAP_RECORD_HEADER)
            return 2;
    }
    r = e->rbuf + e->rpos;
    sec = get_u32(r, e->fast_swapped);
    frac = get_u32(r + 4, e->fast_swapped);
    caplen = get_u32(r + 8, e->fast_swapped);
    /* libpcap refuses more than its MAXIMUM_SNAPLEN for most link types: leave it to say so. */
    if (caplen > e->fast_snap || caplen > 262144u || sec > 0x7fffffffu ||
        frac >= (e->fast_nsec ? 1000000000u : 1000000u))
        return 2;
    if (e->rlen - e->rpos < PCAP_RECORD_HEADER + (size_t)caplen) {
        fast_refill(e);
        r = e->rbuf + e->rpos;
        if (e->rlen - e->rpos < PCAP_RECORD_HEADER + (size_t)caplen)
            return 2;
    }
    h->ts.tv_sec = (time_t)sec;
    h->ts.tv_usec = (suseconds_t)(e->fast_nsec ? frac : frac * 1000u);
    h->caplen = caplen;
    h->len = get_u32(r + 12, e->fast_swapped);
    *data = r + PCAP_RECORD_HEADER;
    e->rpos += PCAP_RECORD_HEADER + (size_t)caplen;
    return 1;
}

int mld_engine_open(struct mld_engine *e, const char *path)
{
    char errbuf[PCAP_ERRBUF_SIZE];
    pcap_t *p;
    FILE *f;
    int dlt;

    if (e->pcap != NULL)
        mld_engine_close(e);

    errbuf[0] = '\0';
    f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(e->error, sizeof(e->error), "%s", strerror(errno));
        return -1;
    }
    /* libpcap reads record by record through stdio: a large buffer saves most syscalls. */
    if (e->iobuf == NULL)
        e->iobuf = malloc(MLD_IOBUF_SIZE);
    if (e->iobuf != NULL)
        setvbuf(f, e->iobuf, _IOFBF, MLD_IOBUF_SIZE);
    p = pcap_fopen_offline_with_tstamp_precision(f, PCAP_TSTAMP_PRECISION_NANO, errbuf);
    if (p == NULL) {
        fclose(f);
        snprintf(e->error, sizeof(e->error), "%s", errbuf[0] ? errbuf : "cannot open");
        return -1;
    }
    dlt = pcap_datalink(p);
    if (!mld_dlt_supported(dlt)) {
        snprintf(e->error, sizeof(e->error), "%s (DLT %d)", mld_dlt_name(dlt), dlt);
        pcap_close(p);
        return -2;
    }
    e->pcap = p;
    e->dlt = dlt;
    e->pending = 0;
    e->stats.files++;
    fast_start(e, f);
    return 0;
}

/* Pull the next record into e->pkt. 1 read, 0 end of file, -1 error (message set). */
static int next_packet(struct mld_engine *e)
{
    struct pcap_pkthdr *h, fast_h;
    const u_char *data;
    __u64 ts;
    int rc = 2;

    if (e->fast) {
        h = &fast_h;
        rc = fast_next(e, h, &data);
        if (rc == 0)
            return 0;
        if (rc == 2 && fast_fallback(e) != 0)
            return -1;
    }
    if (rc == 2)
        rc = pcap_next_ex(e->pcap, &h, &data);
    if (rc != 1) {
        if (rc == PCAP_ERROR_BREAK || rc == 0)
            return 0;
        {
            FILE *f = pcap_file(e->pcap);
            long off = f != NULL ? ftell(f) : -1;

            snprintf(e->error, sizeof(e->error), "byte offset %ld: %s", off,
                     pcap_geterr(e->pcap));
        }
        return -1;
    }
    e->stats.packets++;
    e->stats.bytes += h->len;
    /* Nanosecond precision: tv_usec holds nanoseconds. Times before 1970 count as 0. */
    ts = h->ts.tv_sec < 0 ? 0 : (__u64)h->ts.tv_sec * 1000000000ULL + (__u64)h->ts.tv_usec;
    memset(&e->pkt, 0, sizeof(e->pkt));
    rc = mld_parse_link(e->dlt, data, data + h->caplen, &e->pkt);
    e->pkt.ts_ns = ts;
    e->pending = 1;
    e->pending_ip = rc == MLD_PARSE_OK;
    if (rc == MLD_PARSE_OK) {
        e->stats.ip_packets++;
        if (e->pkt.frag & MLD_FRAG_IS) {
            e->stats.fragments++;
            if (e->pkt.frag & MLD_FRAG_TINY)
                e->stats.tiny_fragments++;
        }
    } else if (rc == MLD_PARSE_NOT_IP) {
        e->stats.non_ip++;
    } else {
        /* Offline nothing can be dropped: counted, kept out of the flows, as live. */
        e->stats.parse_errors++;
        if (rc == MLD_PARSE_TRUNCATED)
            e->stats.parse_truncated++;
        else if (rc == MLD_PARSE_BAD_LENGTH)
            e->stats.parse_bad_length++;
        else if (rc == MLD_PARSE_EXT_LIMIT)
            e->stats.parse_ext_limit++;
        else
            e->stats.parse_malformed++;
    }
    return 1;
}

/* Expire, then apply the pending packet; 1 when out filled up first (still pending). */
static int step(struct mld_engine *e, size_t limit)
{
    int rc = expire_idle(e, e->pkt.ts_ns, limit);

    if (rc != 0)
        return rc;
    if (e->pending_ip && apply(e, &e->pkt) != 0)
        return -1;
    e->pending = 0;
    return 0;
}

int mld_engine_read(struct mld_engine *e)
{
    if (e->pcap == NULL)
        return MLD_READ_EOF;
    while (e->out_n < e->batch_size) {
        int rc;

        if (!e->pending) {
            rc = next_packet(e);
            if (rc == 0)
                return MLD_READ_EOF;
            if (rc < 0)
                return MLD_READ_ERROR;
        }
        rc = step(e, e->batch_size);
        if (rc < 0)
            return MLD_READ_NOMEM;
    }
    return MLD_READ_FULL;
}

int mld_engine_close(struct mld_engine *e)
{
    int rc = 0;

    if (e->pending)
        rc = step(e, (size_t)-1);
    e->pending = 0;
    if (e->pcap != NULL)
        pcap_close(e->pcap);
    e->pcap = NULL;
    e->fast = 0;
    return rc;
}

int mld_engine_finish(struct mld_engine *e)
{
    struct mld_table *t = &e->table;

    if (mld_engine_close(e) != 0)
        return -1;
    while (t->lru_head != MLD_NIL) {
        if (export_node(e, t->lru_head, MLD_END_CAPTURE_END) != 0)
            return -1;
    }
    return 0;
}

void mld_engine_consume(struct mld_engine *e, size_t n)
{
    if (n >= e->out_n) {
        e->out_n = 0;
        return;
    }
    memmove(e->out, e->out + n, (e->out_n - n) * sizeof(*e->out));
    e->out_n -= n;
}
