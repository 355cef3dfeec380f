/* native/dnswin.c — DNS query windows per (source, registered domain): native._dnswin.
 *
 * The flow engine keeps one (truncated) query name per flow, which cannot tell a tunnel's
 * stream of distinct, long, random subdomains under one domain from a client asking for a
 * few long CDN names. This module reads the DNS queries themselves (UDP to port 53, QR=0)
 * from the same capture files the flow engine reads, or from the live interfaces the XDP
 * program watches (libpcap, inbound packets only, as XDP sees them; a kernel filter passes
 * only DNS queries), and keeps for each source address the queries of its most recently
 * used registered domains:
 *
 *   source (LRU, at most max_sources) -> up to DOMS_PER_SOURCE registered domains (the least
 *   recently queried replaced) -> a ring of the last entries_per_domain queries:
 *   (time, hash of the subdomain, subdomain characters, longest label, entropy, type).
 *
 * lookup(source, t) gives, for the source's domain with the most distinct subdomains among
 * the queries in (t - window, t), the window's aggregates (see COLUMNS below and the
 * DnsDomainWindow message of proto/events.proto). Time is the packets' own, so a capture
 * read offline gives what the same traffic gave live.
 *
 * Registered domain: the last two labels, or the last three when the top label has two
 * characters and the second-level one at most three (co.uk, com.au, ne.jp): an
 * approximation of the public suffix list that errs towards a shorter domain (a longer
 * subdomain), which only matters for names under an unlisted multi-label suffix.
 *
 * Memory is bounded whatever the traffic: max_sources source slots (preallocated,
 * SRC_BYTES each) and at most max_entries allocated query entries (ENTRY_BYTES each);
 * either cap evicts the least recently seen source (counted). A forged-source flood
 * therefore costs at most max_sources * SRC_BYTES + max_entries * ENTRY_BYTES (stats()
 * reports the figure for the configured caps).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pcap/pcap.h>
#include <stdint.h>
#include <string.h>

#define DOMS_PER_SOURCE 4
#define KEY_SIZE 17 /* address length, then 16 bytes (sniffer.batch_windows.address_keys) */
#define MAX_NAME 255
#define MAX_LIVE 16
#define N_COLUMNS 7
/* Subdomains of at least this many characters can carry data; the entropy column is taken
 * over them only (a short name's entropy is bounded by log2 of its length and says
 * nothing, and a tunnel's short keep-alive polls would dilute its data names). */
#define LONG_SUBDOMAIN 16

/* Query types that carry data back in a tunnel (and rarely in ordinary browsing). */
#define QTYPE_CNAME 5
#define QTYPE_NULL 10
#define QTYPE_TXT 16

typedef struct {
    int64_t ts;
    uint32_t sub_hash; /* FNV-1a 32 of the lower-cased subdomain; 0 when none */
    uint16_t sub_len;  /* characters of the subdomain labels, dots left out */
    uint8_t max_label; /* longest label of the subdomain */
    uint8_t entropy;   /* Shannon entropy of the subdomain's characters, bits * 32 */
    uint8_t data_type; /* TXT, NULL or CNAME */
} Entry;

typedef struct {
    uint64_t dom;   /* FNV-1a 64 of the lower-cased registered domain; 0: slot unused */
    int64_t last;   /* newest query time */
    Entry *ring;
    uint32_t cap, len, head;
} Dom;

typedef struct {
    uint8_t key[KEY_SIZE];
    int32_t next_bucket, prev, next; /* hash chain; LRU list (head: least recent) */
    int32_t in_use;
    Dom dom[DOMS_PER_SOURCE];
} Src;

#define SRC_BYTES ((Py_ssize_t)(sizeof(Src) + 2 * sizeof(int32_t)))
#define ENTRY_BYTES ((Py_ssize_t)sizeof(Entry))

typedef struct {
    PyObject_HEAD
    int64_t window_ns;
    Py_ssize_t max_sources, max_entries, per_domain;
    Src *src;
    int32_t *buckets, *free_ids;
    size_t nbuckets, nfree;
    int32_t lru_head, lru_tail;
    Py_ssize_t nsources, entries;
    long long evicted_sources, packets, queries, skipped;
    /* packet sources */
    pcap_t *file;
    int file_dlt;
    int have_pending;
    struct pcap_pkthdr pending_hdr;
    uint8_t *pending;
    pcap_t *live[MAX_LIVE];
    int live_dlt[MAX_LIVE];
    int nlive;
    int failed; /* memory error inside a pcap callback */
} DnsWin;

/* ---- the source table --------------------------------------------------------------------- */

static uint64_t fnv64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static size_t bucket_of(const DnsWin *w, const uint8_t *key)
{
    uint64_t h = fnv64(key, KEY_SIZE);
    return (size_t)(h ^ (h >> 31)) & (w->nbuckets - 1);
}

static int32_t find_src(const DnsWin *w, const uint8_t *key)
{
    int32_t id = w->buckets[bucket_of(w, key)];
    while (id >= 0 && memcmp(w->src[id].key, key, KEY_SIZE) != 0)
        id = w->src[id].next_bucket;
    return id;
}

static void lru_unlink(DnsWin *w, int32_t id)
{
    Src *s = &w->src[id];
    if (s->prev >= 0)
        w->src[s->prev].next = s->next;
    else
        w->lru_head = s->next;
    if (s->next >= 0)
        w->src[s->next].prev = s->prev;
    else
        w->lru_tail = s->prev;
    s->prev = s->next = -1;
}

static void lru_append(DnsWin *w, int32_t id)
{
    Src *s = &w->src[id];
    s->prev = w->lru_tail;
    s->next = -1;
    if (w->lru_tail >= 0)
        w->src[w->lru_tail].next = id;
    else
        w->lru_head = id;
    w->lru_tail = id;
}

static void dom_clear(DnsWin *w, Dom *d)
{
    w->entries -= d->cap;
    PyMem_Free(d->ring);
    memset(d, 0, sizeof(*d));
}

static void forget_src(DnsWin *w, int32_t id)
{
    Src *s = &w->src[id];
    size_t b = bucket_of(w, s->key);
    int32_t *link = &w->buckets[b];

    while (*link != id)
        link = &w->src[*link].next_bucket;
    *link = s->next_bucket;
    lru_unlink(w, id);
    for (int i = 0; i < DOMS_PER_SOURCE; i++)
        dom_clear(w, &s->dom[i]);
    s->in_use = 0;
    w->free_ids[w->nfree++] = id;
    w->nsources--;
}

/* Evict least recently seen sources (never keep) until the caps hold. */
static void enforce_caps(DnsWin *w, int32_t keep)
{
    while ((w->nsources > w->max_sources || w->entries > w->max_entries) && w->lru_head >= 0 &&
           w->lru_head != keep) {
        forget_src(w, w->lru_head);
        w->evicted_sources++;
    }
}

static int32_t get_src(DnsWin *w, const uint8_t *key)
{
    int32_t id = find_src(w, key);
    size_t b;

    if (id >= 0) {
        lru_unlink(w, id);
        lru_append(w, id);
        return id;
    }
    if (w->nfree == 0) {
        forget_src(w, w->lru_head);
        w->evicted_sources++;
    }
    id = w->free_ids[--w->nfree];
    memset(&w->src[id], 0, sizeof(Src));
    memcpy(w->src[id].key, key, KEY_SIZE);
    w->src[id].in_use = 1;
    b = bucket_of(w, key);
    w->src[id].next_bucket = w->buckets[b];
    w->buckets[b] = id;
    lru_append(w, id);
    w->nsources++;
    return id;
}

/* Add one query; -1 on memory error. */
static int add_query(DnsWin *w, const uint8_t *key, int64_t ts, uint64_t dom, const Entry *e)
{
    int32_t id = get_src(w, key);
    Src *s = &w->src[id];
    Dom *d = NULL;
    int oldest = 0;

    for (int i = 0; i < DOMS_PER_SOURCE; i++) {
        if (s->dom[i].dom == dom) {
            d = &s->dom[i];
            break;
        }
        if (s->dom[i].dom == 0 || (s->dom[oldest].dom != 0 && s->dom[i].last < s->dom[oldest].last))
            oldest = i;
    }
    if (d == NULL) {
        d = &s->dom[oldest];
        if (d->dom != 0)
            dom_clear(w, d);
        d->dom = dom;
    }
    if (d->len == d->cap && d->cap < (uint32_t)w->per_domain) {
        uint32_t cap = d->cap ? d->cap * 2 : 4;
        Entry *ring;
        if (cap > (uint32_t)w->per_domain)
            cap = (uint32_t)w->per_domain;
        ring = PyMem_Malloc(cap * sizeof(Entry));
        if (ring == NULL)
            return -1;
        for (uint32_t i = 0; i < d->len; i++)
            ring[i] = d->ring[(d->head + i) % d->cap];
        PyMem_Free(d->ring);
        w->entries += cap - d->cap;
        d->ring = ring;
        d->cap = cap;
        d->head = 0;
    }
    if (d->len == d->cap) { /* full at its cap: the oldest query goes */
        d->ring[d->head] = *e;
        d->head = (d->head + 1) % d->cap;
    } else {
        d->ring[(d->head + d->len) % d->cap] = *e;
        d->len++;
    }
    if (ts > d->last)
        d->last = ts;
    enforce_caps(w, id);
    return 0;
}

/* ---- parsing a DNS query out of a link-layer frame ---------------------------------------- */

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* The IP packet inside a frame of link type dlt; NULL when there is none. */
static const uint8_t *ip_of(int dlt, const uint8_t *p, const uint8_t *end)
{
    uint16_t type;

    switch (dlt) {
    case DLT_EN10MB:
        if (end - p < 14)
            return NULL;
        type = be16(p + 12);
        p += 14;
        while ((type == 0x8100 || type == 0x88a8) && end - p >= 4) {
            type = be16(p + 2);
            p += 4;
        }
        return (type == 0x0800 || type == 0x86dd) ? p : NULL;
    case DLT_LINUX_SLL:
        if (end - p < 16)
            return NULL;
        type = be16(p + 14);
        return (type == 0x0800 || type == 0x86dd) ? p + 16 : NULL;
#ifdef DLT_LINUX_SLL2
    case DLT_LINUX_SLL2:
        if (end - p < 20)
            return NULL;
        type = be16(p);
        return (type == 0x0800 || type == 0x86dd) ? p + 20 : NULL;
#endif
    case DLT_NULL:
    case DLT_LOOP:
        return end - p >= 4 ? p + 4 : NULL;
    case DLT_RAW:
#ifdef DLT_IPV4
    case DLT_IPV4:
    case DLT_IPV6:
#endif
    case 14: /* DLT_RAW on OpenBSD */
        return p;
    default:
        return NULL;
    }
}

/* Parse a DNS query in frame [p, end); on success fill key, *dom and *e and return 1. */
static int parse_query(int dlt, const uint8_t *p, const uint8_t *end, uint8_t *key,
                       uint64_t *dom, Entry *e)
{
    const uint8_t *ip = ip_of(dlt, p, end), *udp, *dns, *q;
    uint8_t name[MAX_NAME + 1];
    int starts[128], lens[128], nlab = 0, nreg, sub_labels;
    size_t pos = 0;
    unsigned counts[256];

    if (ip == NULL || end - ip < 20)
        return 0;
    memset(key, 0, KEY_SIZE);
    if ((ip[0] >> 4) == 4) {
        size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
        if (ihl < 20 || ip[9] != 17 || (be16(ip + 6) & 0x3fff) != 0 || (size_t)(end - ip) < ihl + 8)
            return 0;
        key[0] = 4;
        memcpy(key + 1, ip + 12, 4);
        udp = ip + ihl;
    } else if ((ip[0] >> 4) == 6) {
        if (end - ip < 48 || ip[6] != 17)
            return 0;
        key[0] = 16;
        memcpy(key + 1, ip + 8, 16);
        udp = ip + 40;
    } else {
        return 0;
    }
    if (be16(udp + 2) != 53 || end - udp < 8 + 12 + 5)
        return 0;
    dns = udp + 8;
    /* QR=0 (a query), opcode 0 (QUERY), at least one question. */
    if ((dns[2] & 0xf8) != 0 || be16(dns + 4) == 0)
        return 0;
    q = dns + 12;
    while (q < end && *q != 0) {
        uint8_t len = *q;
        if ((len & 0xc0) != 0 || nlab == 128 || q + 1 + len > end || pos + len + 1 > MAX_NAME)
            return 0;
        starts[nlab] = (int)pos;
        lens[nlab++] = len;
        for (int i = 0; i < len; i++) {
            uint8_t c = q[1 + i];
            name[pos++] = (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
        }
        name[pos++] = '.';
        q += 1 + len;
    }
    if (q + 5 > end || nlab == 0)
        return 0;
    nreg = nlab >= 2 ? 2 : 1;
    if (nlab >= 3 && lens[nlab - 1] == 2 && lens[nlab - 2] <= 3)
        nreg = 3;
    sub_labels = nlab - nreg;
    *dom = fnv64(name + starts[sub_labels], pos - (size_t)starts[sub_labels]);
    if (*dom == 0)
        *dom = 1;
    memset(e, 0, sizeof(*e));
    {
        uint16_t qtype = be16(q + 1);
        e->data_type = qtype == QTYPE_TXT || qtype == QTYPE_NULL || qtype == QTYPE_CNAME;
    }
    if (sub_labels > 0) {
        uint32_t h = 2166136261u;
        unsigned chars = 0, maxlab = 0;
        double ent = 0.0;
        memset(counts, 0, sizeof(counts));
        for (int l = 0; l < sub_labels; l++) {
            for (int i = 0; i < lens[l]; i++) {
                uint8_t c = name[starts[l] + i];
                counts[c]++;
                h = (h ^ c) * 16777619u;
            }
            h = (h ^ '.') * 16777619u;
            chars += (unsigned)lens[l];
            if ((unsigned)lens[l] > maxlab)
                maxlab = (unsigned)lens[l];
        }
        for (int c = 0; c < 256; c++) {
            if (counts[c]) {
                double f = (double)counts[c] / chars;
                ent -= f * log2(f);
            }
        }
        e->sub_hash = h ? h : 1;
        e->sub_len = (uint16_t)chars;
        e->max_label = (uint8_t)(maxlab > 255 ? 255 : maxlab);
        e->entropy = (uint8_t)lrint(ent * 32.0 > 255.0 ? 255.0 : ent * 32.0);
    }
    return 1;
}

static int handle_frame(DnsWin *w, int dlt, const struct pcap_pkthdr *h, const uint8_t *p)
{
    uint8_t key[KEY_SIZE];
    uint64_t dom;
    Entry e;

    w->packets++;
    if (!parse_query(dlt, p, p + h->caplen, key, &dom, &e)) {
        w->skipped++;
        return 0;
    }
    /* files and interfaces are opened with nanosecond precision: tv_usec holds ns */
    e.ts = (int64_t)h->ts.tv_sec * 1000000000LL + (int64_t)h->ts.tv_usec;
    w->queries++;
    return add_query(w, key, e.ts, dom, &e);
}

/* ---- Python: packet sources --------------------------------------------------------------- */

static const char FILTER[] = "udp dst port 53 or (vlan and udp dst port 53)";

static int set_filter(pcap_t *p)
{
    struct bpf_program prog;
    if (pcap_compile(p, &prog, FILTER, 1, PCAP_NETMASK_UNKNOWN) < 0)
        return -1;
    if (pcap_setfilter(p, &prog) < 0) {
        pcap_freecode(&prog);
        return -1;
    }
    pcap_freecode(&prog);
    return 0;
}

static void close_file(DnsWin *w)
{
    if (w->file)
        pcap_close(w->file);
    w->file = NULL;
    w->have_pending = 0;
}

static PyObject *dw_open_file(DnsWin *w, PyObject *args)
{
    const char *path;
    char err[PCAP_ERRBUF_SIZE];

    if (!PyArg_ParseTuple(args, "s", &path))
        return NULL;
    close_file(w);
    w->file = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_NANO, err);
    if (w->file == NULL) {
        PyErr_Format(PyExc_OSError, "%s: %s", path, err);
        return NULL;
    }
    w->file_dlt = pcap_datalink(w->file);
    /* A link type the filter cannot take (an unusual capture): read every packet, the
     * parser skips what it does not know. */
    (void)set_filter(w->file);
    Py_RETURN_NONE;
}

static PyObject *dw_open_live(DnsWin *w, PyObject *args)
{
    const char *iface;
    char err[PCAP_ERRBUF_SIZE];
    pcap_t *p;

    if (!PyArg_ParseTuple(args, "s", &iface))
        return NULL;
    if (w->nlive == MAX_LIVE) {
        PyErr_Format(PyExc_ValueError, "DnsWindows: at most %d interfaces", MAX_LIVE);
        return NULL;
    }
    p = pcap_create(iface, err);
    if (p == NULL) {
        PyErr_Format(PyExc_OSError, "%s: %s", iface, err);
        return NULL;
    }
    pcap_set_snaplen(p, 1600);
    pcap_set_timeout(p, 10);
    pcap_set_immediate_mode(p, 1);
    pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO);
    /* Inbound only, as the XDP program sees packets: on a gateway watching both NICs a
     * forwarded query also leaves by the other one, and counting it there too doubled
     * the live windows' queries against the same traffic read from a capture. */
    if (pcap_activate(p) < 0 || pcap_setdirection(p, PCAP_D_IN) < 0 || set_filter(p) < 0 ||
        pcap_setnonblock(p, 1, err) < 0) {
        PyErr_Format(PyExc_OSError, "%s: %s", iface, pcap_geterr(p));
        pcap_close(p);
        return NULL;
    }
    w->live_dlt[w->nlive] = pcap_datalink(p);
    w->live[w->nlive++] = p;
    Py_RETURN_NONE;
}

static void live_cb(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
    DnsWin *w = (DnsWin *)user;
    /* nlive is borrowed as the index of the interface being read (dw_advance) */
    if (handle_frame(w, w->live_dlt[w->nlive], h, bytes) < 0)
        w->failed = 1;
}

/* Read the open file's packets up to time until (the first later one is kept for the next
 * call): 0, 1 at the end of the file (closed), -1 on memory error. */
static int advance_file(DnsWin *w, int64_t until)
{
    if (w->file == NULL)
        return 1;
    for (;;) {
        struct pcap_pkthdr *h;
        const u_char *data;
        int64_t ts;
        if (!w->have_pending) {
            int rc = pcap_next_ex(w->file, &h, &data);
            if (rc == 0)
                continue;
            if (rc < 0) {
                close_file(w);
                return 1;
            }
            if (h->caplen > 65536)
                continue;
            w->pending_hdr = *h;
            memcpy(w->pending, data, h->caplen);
            w->have_pending = 1;
        }
        ts = (int64_t)w->pending_hdr.ts.tv_sec * 1000000000LL + (int64_t)w->pending_hdr.ts.tv_usec;
        if (ts > until)
            return 0;
        w->have_pending = 0;
        if (handle_frame(w, w->file_dlt, &w->pending_hdr, w->pending) < 0)
            return -1;
    }
}

/* advance(until_ns): offline, read the open file's packets up to time until_ns; returns 1
 * at the end of the file, else 0. Live, read every packet waiting on the interfaces
 * (until_ns is not used); returns 0. */
static PyObject *dw_advance(DnsWin *w, PyObject *args)
{
    long long until;
    int rc;

    if (!PyArg_ParseTuple(args, "L", &until))
        return NULL;
    if (w->nlive) {
        int n = w->nlive;
        for (int i = 0; i < n; i++) {
            int got;
            w->nlive = i; /* index for live_cb */
            got = pcap_dispatch(w->live[i], -1, live_cb, (u_char *)w);
            w->nlive = n;
            if (w->failed) {
                w->failed = 0;
                return PyErr_NoMemory();
            }
            if (got < 0) {
                PyErr_Format(PyExc_OSError, "DNS capture: %s", pcap_geterr(w->live[i]));
                return NULL;
            }
        }
        return PyLong_FromLong(0);
    }
    rc = advance_file(w, until);
    if (rc < 0)
        return PyErr_NoMemory();
    return PyLong_FromLong(rc);
}

/* ---- Python: lookups ---------------------------------------------------------------------- */

/* Distinct values among the n nonzero hashes, with an open-addressing set in table (room
 * for 2 * per_domain entries, so at least twice n): linear in n. */
static unsigned count_distinct(const uint32_t *hashes, unsigned n, uint32_t *table)
{
    unsigned cap = 4, distinct = 0;

    while (cap < 2 * n)
        cap <<= 1;
    memset(table, 0, cap * sizeof(uint32_t));
    for (unsigned k = 0; k < n; k++) {
        uint32_t h = hashes[k];
        unsigned i = (h ^ (h >> 16)) & (cap - 1);
        while (table[i] != 0 && table[i] != h)
            i = (i + 1) & (cap - 1);
        if (table[i] == 0) {
            table[i] = h;
            distinct++;
        }
    }
    return distinct;
}

/* The window of the source's domain with the most distinct subdomains at time t. */
static void window_of(DnsWin *w, const Src *s, int64_t t, double *out, uint32_t *scratch)
{
    int64_t from = t - w->window_ns;
    double best_distinct = -1, best_queries = 0;

    memset(out, 0, N_COLUMNS * sizeof(double));
    for (int i = 0; i < DOMS_PER_SOURCE; i++) {
        const Dom *d = &s->dom[i];
        unsigned n = 0, with_sub = 0, n_long = 0, distinct = 0, maxlab = 0, data = 0;
        double len = 0, ent = 0;
        if (d->dom == 0)
            continue;
        for (uint32_t k = 0; k < d->len; k++) {
            const Entry *e = &d->ring[(d->head + k) % d->cap];
            /* Strictly before t: a record's time is its last packet's; when that packet is
             * a query, XDP stamped it a few microseconds before libpcap did, so live it
             * lies after t while in a capture both read the same time. Leaving it out on
             * both sides keeps live and offline equal (tests/test_dns_windows_live_
             * equals_offline.py). */
            if (e->ts <= from || e->ts >= t)
                continue;
            n++;
            data += e->data_type;
            if (e->sub_hash) {
                scratch[with_sub++] = e->sub_hash;
                len += e->sub_len;
                if (e->sub_len >= LONG_SUBDOMAIN) {
                    ent += e->entropy / 32.0;
                    n_long++;
                }
                if (e->max_label > maxlab)
                    maxlab = e->max_label;
            }
        }
        if (n == 0)
            continue;
        distinct = count_distinct(scratch, with_sub, scratch + w->per_domain);
        if ((double)distinct > best_distinct ||
            ((double)distinct == best_distinct && (double)n > best_queries)) {
            best_distinct = distinct;
            best_queries = n;
            out[0] = n;
            out[1] = distinct;
            out[2] = with_sub ? len / with_sub : 0.0;
            out[3] = maxlab;
            out[4] = n_long ? ent / n_long : 0.0;
            out[5] = (double)data / n;
            out[6] = (double)n * 1e9 / (double)w->window_ns;
        }
    }
}

/* lookup(keys, ts, out, start, advance) -> next: keys (n, 17) uint8, ts (n,) int64 in
 * ascending order, out (n, N_COLUMNS) float64; rows from start on. With advance and a file
 * open, the file is read up to each row's time before its lookup, so every row sees the
 * queries before its own time; when the file ends the index of the row not yet done is
 * returned (open the next file and call again), else n. */
static PyObject *dw_lookup(DnsWin *w, PyObject *args)
{
    PyObject *ok, *ot, *oo;
    Py_buffer bk, bt, bo;
    Py_ssize_t n, start, i;
    int advance;
    uint32_t *scratch;

    if (!PyArg_ParseTuple(args, "OOOnp", &ok, &ot, &oo, &start, &advance))
        return NULL;
    if (PyObject_GetBuffer(ok, &bk, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(ot, &bt, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bk);
        return NULL;
    }
    if (PyObject_GetBuffer(oo, &bo, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&bk);
        PyBuffer_Release(&bt);
        return NULL;
    }
    n = bt.len / 8;
    if (bk.len != n * KEY_SIZE || bo.len != n * N_COLUMNS * 8) {
        PyErr_SetString(PyExc_ValueError, "DnsWindows.lookup: keys, ts and out disagree in size");
        goto fail;
    }
    /* the window's hashes, then a set of at least twice as many slots (count_distinct) */
    scratch = PyMem_Malloc((size_t)w->per_domain * 5 * sizeof(uint32_t) + 16);
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (i = start < 0 ? 0 : start; i < n; i++) {
        const uint8_t *key = (const uint8_t *)bk.buf + i * KEY_SIZE;
        double *out = (double *)bo.buf + i * N_COLUMNS;
        int32_t id;
        if (advance && w->file != NULL) {
            int rc = advance_file(w, ((const int64_t *)bt.buf)[i]);
            if (rc < 0) {
                PyMem_Free(scratch);
                PyErr_NoMemory();
                goto fail;
            }
            if (rc == 1)
                break;
        }
        id = find_src(w, key);
        if (id < 0) {
            memset(out, 0, N_COLUMNS * sizeof(double));
            continue;
        }
        window_of(w, &w->src[id], ((const int64_t *)bt.buf)[i], out, scratch);
    }
    PyMem_Free(scratch);
    PyBuffer_Release(&bk);
    PyBuffer_Release(&bt);
    PyBuffer_Release(&bo);
    return PyLong_FromSsize_t(i);
fail:
    PyBuffer_Release(&bk);
    PyBuffer_Release(&bt);
    PyBuffer_Release(&bo);
    return NULL;
}

static PyObject *dw_stats(DnsWin *w, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue(
        "{s:n,s:n,s:L,s:L,s:L,s:L,s:n}", "sources", w->nsources, "entries", w->entries,
        "evicted_sources", w->evicted_sources, "packets", w->packets, "queries", w->queries,
        "skipped", w->skipped, "max_bytes",
        w->max_sources * SRC_BYTES + (Py_ssize_t)w->nbuckets * 4 + w->max_entries * ENTRY_BYTES);
}

static PyObject *dw_close(DnsWin *w, PyObject *unused)
{
    (void)unused;
    close_file(w);
    for (int i = 0; i < w->nlive; i++)
        pcap_close(w->live[i]);
    w->nlive = 0;
    Py_RETURN_NONE;
}

static int dw_init(DnsWin *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"window_ns", "max_sources", "max_entries", "entries_per_domain",
                             NULL};
    long long window_ns;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Lnnn", kwlist, &window_ns, &w->max_sources,
                                     &w->max_entries, &w->per_domain))
        return -1;
    if (window_ns <= 0 || w->max_sources < 1 || w->max_sources > (1 << 24) ||
        w->max_entries < 4 || w->per_domain < 4 || w->per_domain > 65536) {
        PyErr_SetString(PyExc_ValueError,
                        "DnsWindows: window_ns > 0, max_sources in [1, 2^24], max_entries >= 4 "
                        "and entries_per_domain in [4, 65536]");
        return -1;
    }
    if (w->src != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "DnsWindows: already initialised");
        return -1;
    }
    w->window_ns = window_ns;
    w->nbuckets = 1;
    while (w->nbuckets < (size_t)w->max_sources * 2)
        w->nbuckets <<= 1;
    w->src = PyMem_Calloc((size_t)w->max_sources, sizeof(Src));
    w->buckets = PyMem_Malloc(w->nbuckets * sizeof(int32_t));
    w->free_ids = PyMem_Malloc((size_t)w->max_sources * sizeof(int32_t));
    w->pending = PyMem_Malloc(65536);
    if (!w->src || !w->buckets || !w->free_ids || !w->pending) {
        PyErr_NoMemory();
        return -1;
    }
    memset(w->buckets, 0xff, w->nbuckets * sizeof(int32_t));
    for (Py_ssize_t i = 0; i < w->max_sources; i++)
        w->free_ids[i] = (int32_t)(w->max_sources - 1 - i);
    w->nfree = (size_t)w->max_sources;
    w->lru_head = w->lru_tail = -1;
    return 0;
}

static void dw_dealloc(DnsWin *w)
{
    dw_close(w, NULL);
    if (w->src) {
        for (Py_ssize_t i = 0; i < w->max_sources; i++)
            for (int d = 0; d < DOMS_PER_SOURCE; d++)
                PyMem_Free(w->src[i].dom[d].ring);
    }
    PyMem_Free(w->src);
    PyMem_Free(w->buckets);
    PyMem_Free(w->free_ids);
    PyMem_Free(w->pending);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef dw_methods[] = {
    {"open_file", (PyCFunction)dw_open_file, METH_VARARGS,
     "open_file(path): read DNS queries from this capture file (closes the previous one)"},
    {"open_live", (PyCFunction)dw_open_live, METH_VARARGS,
     "open_live(iface): also read DNS queries from this interface (needs root)"},
    {"advance", (PyCFunction)dw_advance, METH_VARARGS,
     "advance(until_ns) -> 1 at the end of the file: add the queries seen up to until_ns"},
    {"lookup", (PyCFunction)dw_lookup, METH_VARARGS,
     "lookup(keys, ts, out, start, advance) -> next row: each source's busiest domain window"},
    {"stats", (PyCFunction)dw_stats, METH_NOARGS,
     "{sources, entries, evicted_sources, packets, queries, skipped, max_bytes}"},
    {"close", (PyCFunction)dw_close, METH_NOARGS, "close the file and interfaces"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DnsWinType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._dnswin.DnsWindows",
    .tp_basicsize = sizeof(DnsWin),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "DNS query windows per (source, registered domain); see native/dnswin.c.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)dw_init,
    .tp_dealloc = (destructor)dw_dealloc,
    .tp_methods = dw_methods,
};

static struct PyModuleDef dnswin_module = {
    PyModuleDef_HEAD_INIT, "_dnswin", "DNS query windows (native/dnswin.c).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dnswin(void)
{
    PyObject *m;

    if (PyType_Ready(&DnsWinType) < 0)
        return NULL;
    m = PyModule_Create(&dnswin_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "DnsWindows", (PyObject *)&DnsWinType) < 0 ||
        PyModule_AddIntConstant(m, "N_COLUMNS", N_COLUMNS) < 0 ||
        PyModule_AddIntConstant(m, "SRC_BYTES", SRC_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "ENTRY_BYTES", ENTRY_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
