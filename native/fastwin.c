/* native/fastwin.c — the fast rules' failure and rhythm windows over whole batches
 * (native._flowengine.RuleWindows).
 *
 * The batch twin of FastRules._failures and FastRules._rhythm (sniffer/fast_rules.py), which
 * stay the readable definition: tests/sniffer/test_rule_windows.py feeds both the same
 * random batches and real captures and wants the same doubles. State carried across
 * batches, each piece as the Python keeps it:
 *
 * - failing sources: an insertion-ordered set of source addresses that failed, most recent
 *   last, trimmed to max_keys after each batch; only records of these sources are looked at
 *   (the Python's `todo`, computed after the whole batch updated the set);
 * - pairs (port_scan): windows per (source, destination) of the failed destination ports;
 * - ports (host_sweep): windows per (source, port) of every flow after the first failure,
 *   a sum of failures and the distinct destinations that failed;
 * - pending: a key's first failure waits here, not in a window (a spoofed flood brings a
 *   new source with every packet), insertion-ordered, the older half forgotten when it
 *   holds more than max_keys; pair and port keys share it, as in the Python;
 * - last starts (beacon): the latest connection start per (source, destination, port,
 *   protocol), insertion-ordered, the older half of those without a window forgotten past
 *   max_keys; beacons: windows of (gap, size) per such key; a record's regularity of gaps
 *   and of sizes is 1 - MAD/median over its window (computed only past min_connections).
 *
 * "A look-up that adds no entry": an answered flow of a failing source reads its pair's
 * window without adding to it (peek: expired entries go, recency is kept), and a port key
 * that neither has a window nor a pending failure is skipped without creating anything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastwin.h"
#include "windows.h"

#define ADDR 17                    /* an address key: its length, then 16 bytes */
#define PAIR_KEY (2 * ADDR)        /* source, destination */
#define PORT_KEY (ADDR + 8)        /* source, port as int64 little-endian */
#define TAG_KEY (1 + PAIR_KEY)     /* pending: 'a' pair / 'o' port, then the key, 0-padded */
#define BEACON_KEY (2 * ADDR + 3)  /* source, destination, port (u16 LE), protocol */
#define PENDING_PAYLOAD (8 + ADDR + 1) /* ts, the value (port or destination), failed */

/* ---- an insertion-ordered map of fixed-size keys to fixed-size payloads ------------------ */

typedef struct {
    MldTable index; /* key -> node + 1 */
    size_t ksize, psize;
    uint8_t *keys, *payload, *live; /* live[node]: the node holds a key */
    uint32_t *hashes;               /* hashes[node]: its key's hash in index */
    int32_t *prev, *next;
    int32_t head, tail; /* head: oldest insertion */
    int32_t *free_ids;
    size_t nfree, nnodes, cap;
    Py_ssize_t len;
} OrdMap;

static int om_init(OrdMap *m, size_t ksize, size_t psize)
{
    memset(m, 0, sizeof(*m));
    m->ksize = ksize;
    m->psize = psize;
    m->head = m->tail = -1;
    return mld_btab_init(&m->index, ksize, 1024);
}

static void om_free(OrdMap *m)
{
    mld_btab_free(&m->index);
    PyMem_Free(m->keys);
    PyMem_Free(m->payload);
    PyMem_Free(m->live);
    PyMem_Free(m->hashes);
    PyMem_Free(m->prev);
    PyMem_Free(m->next);
    PyMem_Free(m->free_ids);
    memset(m, 0, sizeof(*m));
}

/* om_find for a key whose hash (mld_btab_hash on index) is known. */
static int32_t om_find_hashed(const OrdMap *m, const uint8_t *key, uint32_t h)
{
    size_t slot = mld_btab_slot_hashed(&m->index, key, h);
    return m->index.slots[slot].val ? m->index.slots[slot].val - 1 : -1;
}

static uint8_t *om_payload(OrdMap *m, int32_t node)
{
    return m->payload + (size_t)node * m->psize;
}

static void om_unlink(OrdMap *m, int32_t node)
{
    if (m->prev[node] >= 0)
        m->next[m->prev[node]] = m->next[node];
    else
        m->head = m->next[node];
    if (m->next[node] >= 0)
        m->prev[m->next[node]] = m->prev[node];
    else
        m->tail = m->prev[node];
}

static void om_link_tail(OrdMap *m, int32_t node)
{
    m->prev[node] = m->tail;
    m->next[node] = -1;
    if (m->tail >= 0)
        m->next[m->tail] = node;
    else
        m->head = node;
    m->tail = node;
}

/* The node of key, appended at the end (*fresh set) if it was not there; -1 on memory
 * error. One probe of the index either way. */
static int32_t om_upsert_hashed(OrdMap *m, const uint8_t *key, uint32_t h, int *fresh)
{
    int32_t node, *slot;

    if (m->nfree == 0 && m->nnodes == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        uint8_t *keys = PyMem_Realloc(m->keys, cap * m->ksize);
        uint8_t *payload, *live;
        uint32_t *hashes;
        int32_t *prev, *next, *free_ids;
        if (keys)
            m->keys = keys;
        payload = PyMem_Realloc(m->payload, cap * (m->psize ? m->psize : 1));
        if (payload)
            m->payload = payload;
        live = PyMem_Realloc(m->live, cap);
        if (live)
            m->live = live;
        hashes = PyMem_Realloc(m->hashes, cap * sizeof(uint32_t));
        if (hashes)
            m->hashes = hashes;
        prev = PyMem_Realloc(m->prev, cap * sizeof(int32_t));
        if (prev)
            m->prev = prev;
        next = PyMem_Realloc(m->next, cap * sizeof(int32_t));
        if (next)
            m->next = next;
        free_ids = PyMem_Realloc(m->free_ids, cap * sizeof(int32_t));
        if (free_ids)
            m->free_ids = free_ids;
        if (!keys || !payload || !live || !hashes || !prev || !next || !free_ids)
            return -1;
        m->cap = cap;
    }
    slot = mld_btab_upsert_hashed(&m->index, key, h, fresh);
    if (slot == NULL)
        return -1;
    if (!*fresh)
        return *slot - 1;
    node = m->nfree ? m->free_ids[--m->nfree] : (int32_t)m->nnodes++;
    *slot = node + 1;
    memcpy(m->keys + (size_t)node * m->ksize, key, m->ksize);
    m->hashes[node] = h;
    m->live[node] = 1;
    om_link_tail(m, node);
    m->len++;
    return node;
}

static int32_t om_upsert(OrdMap *m, const uint8_t *key, int *fresh)
{
    return om_upsert_hashed(m, key, mld_btab_hash(&m->index, key), fresh);
}

static void om_move_to_end(OrdMap *m, int32_t node)
{
    if (m->tail == node)
        return;
    om_unlink(m, node);
    om_link_tail(m, node);
}

static void om_remove(OrdMap *m, int32_t node)
{
    size_t slot =
        mld_btab_slot_hashed(&m->index, m->keys + (size_t)node * m->ksize, m->hashes[node]);
    mld_btab_remove_slot(&m->index, slot);
    om_unlink(m, node);
    m->live[node] = 0;
    m->free_ids[m->nfree++] = node;
    m->len--;
}

/* ---- the object --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int ready;
    Py_ssize_t max_keys;
    OrdMap failing; /* source address -> nothing */
    OrdMap pending; /* tag key -> (ts, value, failed) */
    OrdMap last;    /* beacon key -> latest start (int64) */
    MldWinSet pairs, ports, beacons;
} RuleWindowsObject;

/* FastRules._promote: a key's first failure waits in pending; at its second entry the window
 * is made with the first one in it and 1 returned (the caller then adds the entry). -1 on
 * memory error. */
static int promote(RuleWindowsObject *r, const uint8_t *tag, uint32_t tag_hash, MldWinSet *w,
                   const uint8_t *key, uint32_t key_hash, int64_t ts, const uint8_t *value,
                   int failed)
{
    int fresh;
    int32_t node = om_upsert_hashed(&r->pending, tag, tag_hash, &fresh);
    uint8_t *p;

    if (node < 0)
        return -1;
    p = om_payload(&r->pending, node);
    if (fresh) {
        memcpy(p, &ts, 8);
        memcpy(p + 8, value, ADDR);
        p[8 + ADDR] = (uint8_t)failed;
        if (r->pending.len > w->max_keys) {
            /* Forget the older half of the one-off failures (a spoofed flood's sources). */
            Py_ssize_t drop = r->pending.len / 2;
            for (Py_ssize_t i = 0; i < drop; i++)
                om_remove(&r->pending, r->pending.head);
        }
        return 0;
    }
    {
        int64_t first_ts;
        uint8_t first_value[ADDR], first_failed;
        double sums;
        memcpy(&first_ts, p, 8);
        memcpy(first_value, p + 8, ADDR);
        first_failed = p[8 + ADDR];
        om_remove(&r->pending, node);
        sums = first_failed ? 1.0 : 0.0;
        /* pairs: no sums, the port counted; ports: the failure, the destination if failed */
        if (mld_winset_add_hashed(w, key, key_hash, first_ts, &sums, first_value,
                                  &first_failed) < 0)
            return -1;
    }
    return 1;
}

/* The hashes of the keys record j of a failures batch looks up: its source in the failing
 * set (unless it failed: it knows its node), its pair and port windows and their pending
 * first failures ('a' only for a failure). Computed MLD_PREFETCH_AHEAD records ahead, when
 * their home slots are prefetched (a spoofed flood makes nearly every look-up a cache
 * miss), and used again at the record's turn: each key is hashed once. */
typedef struct {
    uint32_t failing, pair, pair_tag, port, port_tag;
} FailureHashes;

static void failure_hashes(RuleWindowsObject *r, const uint8_t *s, const uint8_t *d,
                           int64_t sport, int bad, FailureHashes *h)
{
    uint8_t tag[TAG_KEY];

    if (!bad) {
        h->failing = mld_btab_hash(&r->failing.index, s);
        mld_btab_prefetch_hashed(&r->failing.index, h->failing);
    }
    memset(tag, 0, TAG_KEY);
    tag[0] = 'a';
    memcpy(tag + 1, s, ADDR);
    memcpy(tag + 1 + ADDR, d, ADDR);
    h->pair = mld_btab_hash(&r->pairs.keys, tag + 1);
    mld_btab_prefetch_hashed(&r->pairs.keys, h->pair);
    if (bad) {
        h->pair_tag = mld_btab_hash(&r->pending.index, tag);
        mld_btab_prefetch_hashed(&r->pending.index, h->pair_tag);
    }
    memset(tag + 1 + ADDR, 0, ADDR);
    tag[0] = 'o';
    memcpy(tag + 1 + ADDR, &sport, 8);
    h->port = mld_btab_hash(&r->ports.keys, tag + 1);
    mld_btab_prefetch_hashed(&r->ports.keys, h->port);
    h->port_tag = mld_btab_hash(&r->pending.index, tag);
    mld_btab_prefetch_hashed(&r->pending.index, h->port_tag);
}

static int failures_batch(RuleWindowsObject *r, Py_ssize_t n, const uint8_t *src,
                          const uint8_t *dst, const int64_t *dst_port, const int64_t *sweep_port,
                          const int64_t *ts, const uint8_t *failed, double *scan_ports,
                          double *sweep_hosts, double *share)
{
    static const uint8_t one = 1;
    static const double no_sums[1] = {0.0};
    FailureHashes hashes[2 * MLD_PREFETCH_AHEAD];
    int32_t *nodes = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));

    if (nodes == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int fresh;
        Py_ssize_t j = i + MLD_PREFETCH_AHEAD;
        if (j < n && failed[j])
            mld_btab_prefetch(&r->failing.index, src + j * ADDR);
        nodes[i] = -1;
        if (!failed[i])
            continue;
        nodes[i] = om_upsert(&r->failing, src + i * ADDR, &fresh);
        if (nodes[i] < 0) {
            PyMem_Free(nodes);
            return -1;
        }
        if (!fresh)
            om_move_to_end(&r->failing, nodes[i]);
    }
    while (r->failing.len > r->max_keys)
        om_remove(&r->failing, r->failing.head);
    if (r->failing.len == 0) {
        PyMem_Free(nodes);
        return 0;
    }

    for (Py_ssize_t i = 0; i < n && i < MLD_PREFETCH_AHEAD; i++)
        failure_hashes(r, src + i * ADDR, dst + i * ADDR, sweep_port[i], failed[i] != 0,
                       &hashes[i]);
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *s = src + i * ADDR, *d = dst + i * ADDR;
        uint8_t pair[PAIR_KEY], port_key[PORT_KEY], tag[TAG_KEY], port_value[ADDR];
        int bad = failed[i] != 0, got;
        int32_t id;
        uint32_t pair_hash, port_hash, tag_hash;
        int64_t port = dst_port[i], sport = sweep_port[i];
        double fail_sum = bad ? 1.0 : 0.0;
        uint8_t counted = (uint8_t)bad;
        Py_ssize_t j = i + MLD_PREFETCH_AHEAD;
        const FailureHashes *h = &hashes[i % (2 * MLD_PREFETCH_AHEAD)];

        if (j < n)
            failure_hashes(r, src + j * ADDR, dst + j * ADDR, sweep_port[j], failed[j] != 0,
                           &hashes[j % (2 * MLD_PREFETCH_AHEAD)]);

        /* Only the sources in the set after the whole batch (trimmed) are looked at. A
         * failed record knows its node (no node is reused before this loop ends). */
        if (bad ? !r->failing.live[nodes[i]] : om_find_hashed(&r->failing, s, h->failing) < 0)
            continue;
        memcpy(pair, s, ADDR);
        memcpy(pair + ADDR, d, ADDR);
        memset(port_value, 0, ADDR);
        memcpy(port_value, &port, 8);
        /* Each key is hashed once here; its look-up, insertion and promotion reuse it. */
        pair_hash = h->pair;
        id = mld_winset_find_hashed(&r->pairs, pair, pair_hash);
        if (bad) {
            got = 1;
            if (id < 0) {
                tag[0] = 'a';
                memcpy(tag + 1, pair, PAIR_KEY);
                tag_hash = h->pair_tag;
                got = promote(r, tag, tag_hash, &r->pairs, pair, pair_hash, ts[i], port_value,
                              1);
                if (got < 0)
                    goto fail;
            }
            if (got) {
                id = mld_winset_add_hashed(&r->pairs, pair, pair_hash, ts[i], no_sums,
                                           port_value, &one);
                if (id < 0)
                    goto fail;
                scan_ports[i] = (double)r->pairs.wins[id].distinct[0].used;
            } else {
                scan_ports[i] = 1.0;
            }
        } else if (id >= 0) {
            mld_winset_peek(&r->pairs, id, ts[i]);
            scan_ports[i] = (double)r->pairs.wins[id].distinct[0].used;
        }

        memcpy(port_key, s, ADDR);
        memcpy(port_key + ADDR, &sport, 8);
        port_hash = h->port;
        id = mld_winset_find_hashed(&r->ports, port_key, port_hash);
        if (id < 0) {
            memset(tag, 0, TAG_KEY);
            tag[0] = 'o';
            memcpy(tag + 1, port_key, PORT_KEY);
            tag_hash = h->port_tag;
            if (!bad && om_find_hashed(&r->pending, tag, tag_hash) < 0)
                continue; /* no failure at this port yet: nothing to score or keep */
            got = promote(r, tag, tag_hash, &r->ports, port_key, port_hash, ts[i], d, bad);
            if (got < 0)
                goto fail;
            if (!got) {
                sweep_hosts[i] = 1.0;
                share[i] = 1.0;
                continue;
            }
        }
        id = mld_winset_add_hashed(&r->ports, port_key, port_hash, ts[i], &fail_sum, d,
                                   &counted);
        if (id < 0)
            goto fail;
        {
            MldKeyWin *k = &r->ports.wins[id];
            sweep_hosts[i] = (double)k->distinct[0].used;
            share[i] = k->len ? k->total[0] / (double)k->len : 0.0;
        }
    }
    PyMem_Free(nodes);
    return 0;
fail:
    PyMem_Free(nodes);
    return -1;
}

/* FastRules._forget_first_starts: the older half of the last starts go, except the keys
 * that have a window. */
static void forget_first_starts(RuleWindowsObject *r)
{
    Py_ssize_t drop = r->last.len / 2;
    int32_t node = r->last.head;
    for (Py_ssize_t i = 0; i < drop && node >= 0; i++) {
        int32_t next = r->last.next[node];
        if (mld_winset_find(&r->beacons, r->last.keys + (size_t)node * BEACON_KEY) < 0)
            om_remove(&r->last, node);
        node = next;
    }
}

/* The k-th smallest of v[0..n) (0-based; v is reordered: after it, v[0..k) <= v[k] <=
 * v[k+1..n)). Quickselect, O(n) on average: the windows hold up to beacon_max_connections. */
static double select_kth(double *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = v[lo + (hi - lo) / 2];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                double t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return v[k];
    }
    return v[k];
}

/* The median of v[0..n) (n >= 1; v is reordered): the middle value, or the mean of the
 * two middle ones. FastRules._median does the same. */
static double median(double *v, size_t n)
{
    double upper = select_kth(v, n, n / 2), lower;
    if (n % 2)
        return upper;
    lower = v[0]; /* the largest of v[0..n/2), all <= upper */
    for (size_t j = 1; j < n / 2; j++)
        if (v[j] > lower)
            lower = v[j];
    return (lower + upper) / 2.0;
}

/* 1 - MAD/median of v[0..n) (v is overwritten), floored at 0; a median of 0 gives 1 when
 * every value is 0, else 0. *med receives the median. FastRules._steadiness. */
static double steadiness(double *v, size_t n, double *med)
{
    double m = median(v, n), mad, out;
    for (size_t j = 0; j < n; j++)
        v[j] = fabs(v[j] - m);
    mad = median(v, n);
    *med = m;
    if (m <= 0.0)
        return mad == 0.0 ? 1.0 : 0.0;
    out = 1.0 - mad / m;
    return out > 0.0 ? out : 0.0;
}

static int rhythm_batch(RuleWindowsObject *r, Py_ssize_t n, const uint8_t *src,
                        const uint8_t *dst, const int64_t *dst_port, const int64_t *proto,
                        const int64_t *start, const double *size, const uint8_t *scored,
                        double min_period, double min_connections, double *count,
                        double *regularity, double *size_regularity)
{
    double *scratch = PyMem_Malloc((size_t)(r->beacons.max_per_key + 1) * sizeof(double));

    if (scratch == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t key[BEACON_KEY];
        uint16_t port = (uint16_t)dst_port[i];
        int32_t node, id;
        int64_t prev, gap_ns;
        double gap, seed[2] = {0.0, 0.0}, sums[2];
        uint8_t none = 0; /* beacons keep no distinct values */
        int fresh;
        MldKeyWin *k;
        size_t gaps;

        if (!scored[i])
            continue;
        memcpy(key, src + i * ADDR, ADDR);
        memcpy(key + ADDR, dst + i * ADDR, ADDR);
        memcpy(key + 2 * ADDR, &port, 2);
        key[2 * ADDR + 2] = (uint8_t)proto[i];
        node = om_upsert(&r->last, key, &fresh);
        if (node < 0)
            goto fail;
        if (fresh) {
            /* A first connection is only remembered by its start; the window begins with
             * the second. */
            memcpy(om_payload(&r->last, node), &start[i], 8);
            count[i] = 1.0;
            if (r->last.len > r->beacons.max_keys)
                forget_first_starts(r);
            continue;
        }
        memcpy(&prev, om_payload(&r->last, node), 8);
        if (start[i] > prev)
            memcpy(om_payload(&r->last, node), &start[i], 8);
        gap_ns = start[i] - prev;
        gap = (double)(gap_ns > 0 ? gap_ns : 0) / 1e9;
        sums[0] = gap;
        sums[1] = size[i];
        if (mld_winset_find(&r->beacons, key) < 0 &&
            mld_winset_add(&r->beacons, key, prev, seed, &none, &none) < 0)
            goto fail;
        id = mld_winset_add(&r->beacons, key, start[i], sums, &none, &none);
        if (id < 0)
            goto fail;
        k = &r->beacons.wins[id];
        count[i] = (double)k->len;
        gaps = k->len - 1; /* the oldest entry's gap reaches outside the window */
        if (gaps >= 2 && count[i] > min_connections) {
            double med, steady;
            for (size_t j = 0; j < gaps; j++)
                scratch[j] = k->sums[((k->head + 1 + j) % k->cap) * 2];
            steady = steadiness(scratch, gaps, &med);
            if (med >= min_period) {
                regularity[i] = steady;
                for (size_t j = 0; j < gaps; j++)
                    scratch[j] = k->sums[((k->head + 1 + j) % k->cap) * 2 + 1];
                size_regularity[i] = steadiness(scratch, gaps, &med);
            }
        }
    }
    PyMem_Free(scratch);
    return 0;
fail:
    PyMem_Free(scratch);
    return -1;
}

/* ---- Python methods ----------------------------------------------------------------------- */

static int ready(RuleWindowsObject *r)
{
    if (!r->ready)
        PyErr_SetString(PyExc_RuntimeError, "RuleWindows: not initialised");
    return r->ready;
}

static PyObject *release_all(Py_buffer *b, int got, int ok)
{
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *rw_failures(RuleWindowsObject *r, PyObject *args)
{
    static const struct {
        int writable;
        Py_ssize_t itemsize, per_row;
        const char *what;
    } spec[9] = {
        {0, 1, ADDR, "source keys"}, {0, 1, ADDR, "destination keys"},
        {0, 8, 1, "dst_port"},       {0, 8, 1, "sweep_port"},
        {0, 8, 1, "ts"},             {0, 1, 1, "failed"},
        {1, 8, 1, "out scan_ports"}, {1, 8, 1, "out sweep_hosts"},
        {1, 8, 1, "out share"},
    };
    PyObject *o[9];
    Py_buffer b[9];
    Py_ssize_t n;
    int got = 0, rc;

    if (!ready(r) || !PyArg_ParseTuple(args, "nOOOOOOOOO", &n, &o[0], &o[1], &o[2], &o[3],
                                       &o[4], &o[5], &o[6], &o[7], &o[8]))
        return NULL;
    for (; got < 9; got++)
        if (mld_get_buffer(o[got], &b[got], spec[got].writable, spec[got].itemsize, n,
                           spec[got].per_row, spec[got].what) < 0)
            return release_all(b, got, 0);
    rc = failures_batch(r, n, b[0].buf, b[1].buf, b[2].buf, b[3].buf, b[4].buf, b[5].buf,
                        b[6].buf, b[7].buf, b[8].buf);
    if (rc < 0)
        PyErr_NoMemory();
    return release_all(b, got, rc == 0);
}

static PyObject *rw_rhythm(RuleWindowsObject *r, PyObject *args)
{
    static const struct {
        int writable;
        Py_ssize_t itemsize, per_row;
        const char *what;
    } spec[10] = {
        {0, 1, ADDR, "source keys"}, {0, 1, ADDR, "destination keys"},
        {0, 8, 1, "dst_port"},       {0, 8, 1, "protocol"},
        {0, 8, 1, "start"},          {0, 8, 1, "size"},
        {0, 1, 1, "scored"},         {1, 8, 1, "out count"},
        {1, 8, 1, "out regularity"}, {1, 8, 1, "out size_regularity"},
    };
    PyObject *o[10];
    Py_buffer b[10];
    Py_ssize_t n;
    double min_period, min_connections;
    int got = 0, rc;

    if (!ready(r) ||
        !PyArg_ParseTuple(args, "nOOOOOOOddOOO", &n, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &min_period, &min_connections, &o[7], &o[8], &o[9]))
        return NULL;
    for (; got < 10; got++)
        if (mld_get_buffer(o[got], &b[got], spec[got].writable, spec[got].itemsize, n,
                           spec[got].per_row, spec[got].what) < 0)
            return release_all(b, got, 0);
    rc = rhythm_batch(r, n, b[0].buf, b[1].buf, b[2].buf, b[3].buf, b[4].buf, b[5].buf,
                      b[6].buf, min_period, min_connections, b[7].buf, b[8].buf, b[9].buf);
    if (rc < 0)
        PyErr_NoMemory();
    return release_all(b, got, rc == 0);
}

static PyObject *rw_reset_beacons(RuleWindowsObject *r, PyObject *args)
{
    long long window_ns;
    Py_ssize_t max_per_key;

    if (!ready(r) || !PyArg_ParseTuple(args, "Ln", &window_ns, &max_per_key))
        return NULL;
    if (window_ns <= 0 || max_per_key < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "RuleWindows.reset_beacons: window_ns and max_per_key must be positive");
        return NULL;
    }
    {
        MldWinSet fresh;
        if (mld_winset_init(&fresh, window_ns, 2, 0, BEACON_KEY, 1, r->beacons.max_keys,
                            max_per_key, r->beacons.max_entries) < 0) {
            mld_winset_free(&fresh);
            return PyErr_NoMemory();
        }
        mld_winset_free(&r->beacons);
        r->beacons = fresh;
    }
    Py_RETURN_NONE;
}

static PyObject *rw_stats(RuleWindowsObject *r, PyObject *unused)
{
    (void)unused;
    if (!ready(r))
        return NULL;
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "failing_sources",
                         r->failing.len, "pending", r->pending.len, "last_starts",
                         r->last.len, "pairs_keys", r->pairs.nkeys, "pairs_entries",
                         r->pairs.total, "ports_keys", r->ports.nkeys, "ports_entries",
                         r->ports.total, "beacons_keys", r->beacons.nkeys, "beacons_entries",
                         r->beacons.total);
}

static void rw_free(RuleWindowsObject *r)
{
    om_free(&r->failing);
    om_free(&r->pending);
    om_free(&r->last);
    mld_winset_free(&r->pairs);
    mld_winset_free(&r->ports);
    mld_winset_free(&r->beacons);
    r->ready = 0;
}

static int rw_init(RuleWindowsObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"window_ns",         "max_keys",           "max_entries_per_key",
                             "max_entries",       "beacon_window_ns",   "beacon_max_per_key",
                             NULL};
    long long window_ns, beacon_window_ns;
    Py_ssize_t max_keys, max_per_key, max_entries, beacon_max;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LnnnLn", kwlist, &window_ns, &max_keys,
                                     &max_per_key, &max_entries, &beacon_window_ns,
                                     &beacon_max))
        return -1;
    if (window_ns <= 0 || beacon_window_ns <= 0 || max_keys < 1 || max_per_key < 1 ||
        max_entries < 1 || beacon_max < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "RuleWindows: the windows and every cap must be positive");
        return -1;
    }
    if (r->ready) {
        PyErr_SetString(PyExc_RuntimeError, "RuleWindows: already initialised");
        return -1;
    }
    r->max_keys = max_keys;
    if (om_init(&r->failing, ADDR, 0) < 0 || om_init(&r->pending, TAG_KEY, PENDING_PAYLOAD) < 0 ||
        om_init(&r->last, BEACON_KEY, 8) < 0 ||
        mld_winset_init(&r->pairs, window_ns, 0, 1, PAIR_KEY, 8, max_keys, max_per_key,
                        max_entries) < 0 ||
        mld_winset_init(&r->ports, window_ns, 1, 1, PORT_KEY, ADDR, max_keys, max_per_key,
                        max_entries) < 0 ||
        mld_winset_init(&r->beacons, beacon_window_ns, 2, 0, BEACON_KEY, 1, max_keys,
                        beacon_max, max_entries) < 0) {
        rw_free(r);
        PyErr_NoMemory();
        return -1;
    }
    r->ready = 1;
    return 0;
}

static void rw_dealloc(RuleWindowsObject *r)
{
    rw_free(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef rw_methods[] = {
    {"failures", (PyCFunction)rw_failures, METH_VARARGS,
     "failures(n, src_keys, dst_keys, dst_port, sweep_port, ts, failed, out_scan_ports, "
     "out_sweep_hosts, out_share)"},
    {"rhythm", (PyCFunction)rw_rhythm, METH_VARARGS,
     "rhythm(n, src_keys, dst_keys, dst_port, protocol, start, size, scored, min_period_s, "
     "min_connections, out_count, out_regularity, out_size_regularity)"},
    {"reset_beacons", (PyCFunction)rw_reset_beacons, METH_VARARGS,
     "reset_beacons(beacon_window_ns, beacon_max_per_key): the rhythm windows start afresh"},
    {"stats", (PyCFunction)rw_stats, METH_NOARGS, "sizes of every table and window set"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject MldRuleWindowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._flowengine.RuleWindows",
    .tp_basicsize = sizeof(RuleWindowsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The fast rules' failure and rhythm windows over batches (sniffer/fast_rules.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rw_init,
    .tp_dealloc = (destructor)rw_dealloc,
    .tp_methods = rw_methods,
};
