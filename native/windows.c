/* native/windows.c — sliding windows per key over whole batches (native._flowengine.Windows).
 *
 * The same windows as sniffer/sliding_window.py (SlidingWindows), entry for entry, for the
 * batch path of the source context and the fast rules: time is the records' own, each
 * key keeps the entries of its last window_ns, running sums and distinct-value counts are
 * updated on insert and eviction, and memory is capped by entries per key, keys and total
 * entries, the least recently updated key going first. Sums are added and subtracted in
 * the same order as the Python class (and reset to exact zeros when a key's window
 * empties), so the results are the same doubles. tests/sniffer/test_batch_windows.py
 * compares the two on real captures and on synthetic streams that hit every cap.
 *
 * Keys and distinct values are fixed-size byte strings (the caller packs an address as
 * its length and 16 bytes). A distinct value whose mask is 0 is not counted in its
 * dimension (the Python tracker counts a port of -1 and subtracts it again).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "windows.h"

/* ---- an open-addressing table of fixed-size byte strings -> int32 ------------------------ */

/* 8 bytes at a time, each word multiplied in and folded, then a full 64-bit avalanche (the
 * splitmix64 finaliser), so the low bits the table masks depend on every key byte (and
 * fewer steps than the byte-wise FNV-1a used before). The keys are addresses a sender
 * chooses (a spoofed flood picks them all), so the hash starts from a random per-process
 * seed, as Python's bytes hash does for the dicts of the Python definition: where a given
 * set of addresses lands is not known in advance. It is no keyed PRF (SipHash is): it
 * raises the bar, it does not prove collisions hard. No result depends on where a key
 * lands. */
static uint64_t hash_seed;

static void seed_hash(void)
{
    uint64_t seed = 0;
    if (hash_seed != 0)
        return;
    if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
        seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    hash_seed = seed | 1;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = hash_seed ^ (uint64_t)n, word;
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        memcpy(&word, p + i, 8);
        h = (h ^ word) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    if (i < n) {
        word = 0;
        memcpy(&word, p + i, n - i);
        h = (h ^ word) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

int mld_btab_init(MldTable *t, size_t size, size_t cap)
{
    seed_hash();
    t->size = size;
    t->cap = cap;
    t->used = 0;
    t->borrowed = 0;
    t->keys = PyMem_Calloc(cap, size ? size : 1);
    t->slots = PyMem_Calloc(cap, sizeof(MldSlot));
    return (t->keys && t->slots) ? 0 : -1;
}

void mld_btab_free(MldTable *t)
{
    if (!t->borrowed) {
        PyMem_Free(t->keys);
        PyMem_Free(t->slots);
    }
    t->borrowed = 0;
    t->keys = NULL;
    t->slots = NULL;
    t->cap = t->used = 0;
}

/* The slot of a key of hash h, or the empty slot where it would go. A slot's stored hash
 * is compared before its key, so a probe past other keys rarely reads their bytes. */
static size_t slot_of(const MldTable *t, const uint8_t *key, uint32_t h)
{
    size_t mask = t->cap - 1;
    size_t i = (size_t)h & mask;
    while (t->slots[i].val != 0 &&
           (t->slots[i].hash != h || memcmp(t->keys + i * t->size, key, t->size) != 0))
        i = (i + 1) & mask;
    return i;
}

size_t mld_btab_slot(const MldTable *t, const uint8_t *key)
{
    return slot_of(t, key, (uint32_t)hash_bytes(key, t->size));
}

uint32_t mld_btab_hash(const MldTable *t, const uint8_t *key)
{
    return (uint32_t)hash_bytes(key, t->size);
}

size_t mld_btab_slot_hashed(const MldTable *t, const uint8_t *key, uint32_t h)
{
    return slot_of(t, key, h);
}

/* Ask the CPU for the home slot of a key (its stored hash and its key bytes) ahead of
 * the look-up: with tables of 10^5 keys nearly every first probe missed the cache (94% of
 * slot_of's time on the bench capture), one miss after another. A batch loop prefetches
 * a few records ahead so the misses overlap. Only a hint: nothing is read or changed. */
void mld_btab_prefetch(const MldTable *t, const uint8_t *key)
{
    size_t i;
    if (t->cap == 0)
        return;
    i = (size_t)(uint32_t)hash_bytes(key, t->size) & (t->cap - 1);
    __builtin_prefetch(&t->slots[i]);
    __builtin_prefetch(t->keys + i * t->size);
}

void mld_btab_prefetch_hashed(const MldTable *t, uint32_t h)
{
    size_t i;
    if (t->cap == 0)
        return;
    i = (size_t)h & (t->cap - 1);
    __builtin_prefetch(&t->slots[i]);
    __builtin_prefetch(t->keys + i * t->size);
}

static int table_grow(MldTable *t)
{
    MldTable bigger;
    if (mld_btab_init(&bigger, t->size, t->cap * 2) < 0) {
        mld_btab_free(&bigger);
        return -1;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].val != 0) {
            size_t j = (size_t)t->slots[i].hash & (bigger.cap - 1);
            while (bigger.slots[j].val != 0)
                j = (j + 1) & (bigger.cap - 1);
            memcpy(bigger.keys + j * t->size, t->keys + i * t->size, t->size);
            bigger.slots[j] = t->slots[i];
        }
    }
    bigger.used = t->used;
    mld_btab_free(t);
    *t = bigger;
    return 0;
}

/* mld_btab_upsert for a key whose hash (mld_btab_hash) is known. */
static int32_t *upsert_hashed(MldTable *t, const uint8_t *key, uint32_t h, int *fresh)
{
    size_t i;
    if (t->cap == 0 && mld_btab_init(t, t->size, 8) < 0)
        return NULL;
    if ((t->used + 1) * 2 > t->cap && table_grow(t) < 0)
        return NULL;
    i = slot_of(t, key, h);
    *fresh = t->slots[i].val == 0;
    if (*fresh) {
        memcpy(t->keys + i * t->size, key, t->size);
        t->slots[i].hash = h;
        t->used++;
    }
    return &t->slots[i].val;
}

int32_t *mld_btab_upsert_hashed(MldTable *t, const uint8_t *key, uint32_t h, int *fresh)
{
    return upsert_hashed(t, key, h, fresh);
}

/* Pointer to the value of key, inserted as 0-valued-but-present (caller sets it) if new;
 * NULL on memory error. *fresh tells whether it was inserted. */
int32_t *mld_btab_upsert(MldTable *t, const uint8_t *key, int *fresh)
{
    return upsert_hashed(t, key, (uint32_t)hash_bytes(key, t->size), fresh);
}

/* Remove the key at slot i (backward-shift deletion, linear probing). */
void mld_btab_remove_slot(MldTable *t, size_t i)
{
    size_t mask = t->cap - 1;
    size_t j = i;
    for (;;) {
        size_t home;
        j = (j + 1) & mask;
        if (t->slots[j].val == 0)
            break;
        home = (size_t)t->slots[j].hash & mask;
        /* Move j back to i unless its home lies cyclically in (i, j]. */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            memcpy(t->keys + i * t->size, t->keys + j * t->size, t->size);
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].val = 0;
    t->used--;
}

/* ---- one key's window --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    MldWinSet s;
} WindowsObject;

/* The arena block of window id: sums, distinct tables' headers, key, the inline ring and the
 * distinct tables' inline slots (mld_winset_init lays it out). */
static uint8_t *win_block(const MldWinSet *w, int32_t id)
{
    return w->chunks[(size_t)id / MLD_WIN_CHUNK] + ((size_t)id % MLD_WIN_CHUNK) * w->block_size;
}

/* Room in the arena for window id (a new chunk when id is the first of one). */
static int win_block_reserve(MldWinSet *w, int32_t id)
{
    size_t c = (size_t)id / MLD_WIN_CHUNK;
    if (c < w->nchunks)
        return 0;
    {
        uint8_t **more = PyMem_Realloc(w->chunks, (c + 1) * sizeof(uint8_t *));
        if (more == NULL)
            return -1;
        w->chunks = more;
        more[c] = PyMem_Malloc(MLD_WIN_CHUNK * w->block_size);
        if (more[c] == NULL)
            return -1;
        w->nchunks = c + 1;
    }
    return 0;
}

static int ring_is_inline(const MldWinSet *w, const MldKeyWin *k, const uint8_t *block)
{
    return (const uint8_t *)k->ts == block + w->off_ts;
}

/* Give back what a window took from the heap (a ring or distinct tables that outgrew the
 * block); the block stays with the id for the next key. */
static void win_release(MldWinSet *w, int32_t id)
{
    MldKeyWin *k = &w->wins[id];
    if (k->ts != NULL && !ring_is_inline(w, k, win_block(w, id))) {
        PyMem_Free(k->ts);
        PyMem_Free(k->sums);
        PyMem_Free(k->vals);
        PyMem_Free(k->mask);
    }
    if (k->distinct) {
        for (int d = 0; d < w->n_distinct; d++)
            mld_btab_free(&k->distinct[d]);
    }
    memset(k, 0, sizeof(*k));
}

/* A fresh window for key at id, on its arena block: nothing is allocated. */
static void win_setup(MldWinSet *w, int32_t id, const uint8_t *key, uint32_t hash)
{
    MldKeyWin *k = &w->wins[id];
    uint8_t *b = win_block(w, id);
    size_t nd = (size_t)w->n_distinct, vs = (size_t)w->vsize;

    memset(k, 0, sizeof(*k));
    k->total = (double *)b;
    memset(k->total, 0, ((size_t)w->n_sums + 1) * sizeof(double));
    k->distinct = (MldTable *)(b + w->off_dist);
    for (size_t d = 0; d < nd; d++) {
        MldTable *t = &k->distinct[d];
        t->cap = MLD_WIN_DISTINCT_INLINE;
        t->used = 0;
        t->size = vs;
        t->keys = b + w->off_dkeys + d * MLD_WIN_DISTINCT_INLINE * vs;
        t->slots = (MldSlot *)(b + w->off_dslots) + d * MLD_WIN_DISTINCT_INLINE;
        t->borrowed = 1;
        memset(t->slots, 0, MLD_WIN_DISTINCT_INLINE * sizeof(MldSlot));
    }
    k->key = b + w->off_key;
    memcpy(k->key, key, (size_t)w->ksize);
    k->hash = hash;
    k->ts = (int64_t *)(b + w->off_ts);
    k->sums = (double *)(b + w->off_sums);
    k->vals = b + w->off_vals;
    k->mask = b + w->off_mask;
    k->cap = MLD_WIN_INLINE;
    k->prev = k->next = -1;
    k->live = 1;
}

static int win_reserve(MldWinSet *w, MldKeyWin *k)
{
    size_t cap = k->cap * 2, nd = (size_t)w->n_distinct, ns = (size_t)w->n_sums;
    int64_t *ts;
    double *sums;
    uint8_t *vals, *mask;
    int was_inline;

    if (k->len < k->cap)
        return 0;
    was_inline = ring_is_inline(w, k, win_block(w, (int32_t)(k - w->wins)));
    ts = PyMem_Malloc(cap * sizeof(int64_t));
    sums = PyMem_Malloc(cap * (ns + 1) * sizeof(double));
    vals = PyMem_Malloc(cap * (nd * (size_t)w->vsize + 1));
    mask = PyMem_Malloc(cap * (nd + 1));
    if (!ts || !sums || !vals || !mask) {
        PyMem_Free(ts);
        PyMem_Free(sums);
        PyMem_Free(vals);
        PyMem_Free(mask);
        return -1;
    }
    for (size_t i = 0; i < k->len; i++) {
        size_t from = (k->head + i) % k->cap;
        ts[i] = k->ts[from];
        memcpy(sums + i * ns, k->sums + from * ns, ns * sizeof(double));
        memcpy(vals + i * nd * w->vsize, k->vals + from * nd * w->vsize, nd * w->vsize);
        memcpy(mask + i * nd, k->mask + from * nd, nd);
    }
    if (!was_inline) {
        PyMem_Free(k->ts);
        PyMem_Free(k->sums);
        PyMem_Free(k->vals);
        PyMem_Free(k->mask);
    }
    k->ts = ts;
    k->sums = sums;
    k->vals = vals;
    k->mask = mask;
    k->cap = cap;
    k->head = 0;
    return 0;
}

static int win_push(MldWinSet *w, MldKeyWin *k, int64_t ts, const double *sums,
                    const uint8_t *vals, const uint8_t *mask)
{
    size_t nd = (size_t)w->n_distinct, ns = (size_t)w->n_sums, at;

    if (win_reserve(w, k) < 0)
        return -1;
    at = (k->head + k->len) % k->cap;
    k->ts[at] = ts;
    memcpy(k->sums + at * ns, sums, ns * sizeof(double));
    memcpy(k->vals + at * nd * w->vsize, vals, nd * w->vsize);
    memcpy(k->mask + at * nd, mask, nd);
    k->len++;
    for (size_t i = 0; i < ns; i++)
        k->total[i] += sums[i];
    for (size_t d = 0; d < nd; d++) {
        int fresh;
        int32_t *count;
        if (!mask[d])
            continue;
        count = mld_btab_upsert(&k->distinct[d], vals + d * w->vsize, &fresh);
        if (count == NULL)
            return -1;
        *count += 1;
    }
    if (ts > k->newest)
        k->newest = ts;
    return 0;
}

static void win_pop(MldWinSet *w, MldKeyWin *k)
{
    size_t nd = (size_t)w->n_distinct, ns = (size_t)w->n_sums, at = k->head;

    for (size_t i = 0; i < ns; i++)
        k->total[i] -= k->sums[at * ns + i];
    for (size_t d = 0; d < nd; d++) {
        MldTable *t = &k->distinct[d];
        size_t slot;
        if (!k->mask[at * nd + d])
            continue;
        slot = mld_btab_slot(t, k->vals + (at * nd + d) * w->vsize);
        if (--t->slots[slot].val == 0)
            mld_btab_remove_slot(t, slot);
    }
    k->head = (k->head + 1) % k->cap;
    k->len--;
    if (k->len == 0)
        memset(k->total, 0, ns * sizeof(double));
}

/* ---- the LRU list of keys ----------------------------------------------------------------- */

static void lru_unlink(MldWinSet *w, int32_t id)
{
    MldKeyWin *k = &w->wins[id];
    if (k->prev >= 0)
        w->wins[k->prev].next = k->next;
    else
        w->lru_head = k->next;
    if (k->next >= 0)
        w->wins[k->next].prev = k->prev;
    else
        w->lru_tail = k->prev;
    k->prev = k->next = -1;
}

static void lru_append(MldWinSet *w, int32_t id)
{
    MldKeyWin *k = &w->wins[id];
    k->prev = w->lru_tail;
    k->next = -1;
    if (w->lru_tail >= 0)
        w->wins[w->lru_tail].next = id;
    else
        w->lru_head = id;
    w->lru_tail = id;
}

/* Index of the window of key (of hash h), created (and appended to the LRU list) if new;
 * -1 on error. */
static int32_t key_window(MldWinSet *w, const uint8_t *key, uint32_t h)
{
    int fresh;
    int32_t *slot = upsert_hashed(&w->keys, key, h, &fresh), id;

    if (slot == NULL)
        return -1;
    if (!fresh) {
        id = *slot - 1;
        lru_unlink(w, id);
        lru_append(w, id);
        return id;
    }
    if (w->nfree) {
        id = w->free_ids[--w->nfree];
    } else {
        if (w->nwins == w->capwins) {
            size_t cap = w->capwins ? w->capwins * 2 : 1024;
            MldKeyWin *more = PyMem_Realloc(w->wins, cap * sizeof(MldKeyWin));
            int32_t *ids = PyMem_Realloc(w->free_ids, cap * sizeof(int32_t));
            if (more)
                w->wins = more;
            if (ids)
                w->free_ids = ids;
            if (!more || !ids)
                return -1;
            w->capwins = cap;
        }
        if (win_block_reserve(w, (int32_t)w->nwins) < 0)
            return -1;
        id = (int32_t)w->nwins++;
    }
    *slot = id + 1;
    win_setup(w, id, key, h);
    lru_append(w, id);
    w->nkeys++;
    return id;
}

/* Forget the least recently updated key unless it is keep; 0 when it was keep. */
static int forget_oldest(MldWinSet *w, int32_t keep)
{
    int32_t id = w->lru_head;
    MldKeyWin *k;
    size_t slot;

    if (id < 0 || id == keep)
        return 0;
    k = &w->wins[id];
    slot = slot_of(&w->keys, k->key, k->hash);
    lru_unlink(w, id);
    w->total -= (Py_ssize_t)k->len;
    mld_btab_remove_slot(&w->keys, slot);
    win_release(w, id);
    w->free_ids[w->nfree++] = id;
    w->nkeys--;
    w->evicted_keys++;
    return 1;
}

/* ---- add a batch -------------------------------------------------------------------------- */

/* mld_winset_add for a key whose hash (mld_btab_hash on the set's keys) is known. */
int32_t mld_winset_add_hashed(MldWinSet *w, const uint8_t *key, uint32_t h, int64_t ts,
                              const double *sums, const uint8_t *vals, const uint8_t *mask)
{
    int32_t id = key_window(w, key, h);
    MldKeyWin *k;
    int64_t horizon;

    if (id < 0)
        return -1;
    k = &w->wins[id];
    if (win_push(w, k, ts, sums, vals, mask) < 0)
        return -1;
    w->total++;
    horizon = k->newest - w->window_ns;
    while (k->len && (k->ts[k->head] < horizon || (Py_ssize_t)k->len > w->max_per_key)) {
        if (k->ts[k->head] >= horizon)
            w->evicted_entries++;
        win_pop(w, k);
        w->total--;
    }
    while (w->nkeys > w->max_keys || w->total > w->max_entries) {
        if (!forget_oldest(w, id))
            break;
    }
    return id;
}

/* One entry, as SlidingWindows.add; the window's index, or -1 on memory error. */
int32_t mld_winset_add(MldWinSet *w, const uint8_t *key, int64_t ts, const double *sums,
                       const uint8_t *vals, const uint8_t *mask)
{
    return mld_winset_add_hashed(w, key, (uint32_t)hash_bytes(key, w->keys.size), ts, sums,
                                 vals, mask);
}

int32_t mld_winset_find_hashed(const MldWinSet *w, const uint8_t *key, uint32_t h)
{
    size_t slot;
    if (w->keys.cap == 0)
        return -1;
    slot = slot_of(&w->keys, key, h);
    return w->keys.slots[slot].val ? w->keys.slots[slot].val - 1 : -1;
}

/* Index of key's window, or -1 when the key is not held (nothing is added or moved). */
int32_t mld_winset_find(const MldWinSet *w, const uint8_t *key)
{
    return mld_winset_find_hashed(w, key, (uint32_t)hash_bytes(key, w->keys.size));
}

/* SlidingWindows.peek(key, ts): drop the window's entries older than max(newest, ts) -
 * window_ns; the key's recency and the eviction counters are not changed. */
void mld_winset_peek(MldWinSet *w, int32_t id, int64_t ts)
{
    MldKeyWin *k = &w->wins[id];
    int64_t horizon = (k->newest > ts ? k->newest : ts) - w->window_ns;
    while (k->len && k->ts[k->head] < horizon) {
        win_pop(w, k);
        w->total--;
    }
}

int mld_winset_init(MldWinSet *w, int64_t window_ns, int n_sums, int n_distinct,
                    Py_ssize_t ksize, Py_ssize_t vsize, Py_ssize_t max_keys,
                    Py_ssize_t max_per_key, Py_ssize_t max_entries)
{
    memset(w, 0, sizeof(*w));
    w->window_ns = window_ns;
    w->n_sums = n_sums;
    w->n_distinct = n_distinct;
    w->ksize = ksize;
    w->vsize = vsize;
    w->max_keys = max_keys;
    w->max_per_key = max_per_key;
    w->max_entries = max_entries;
    w->lru_head = w->lru_tail = -1;
    {
        /* The arena block of a window (win_setup), each part 8-byte aligned. */
        size_t ns = (size_t)n_sums, nd = (size_t)n_distinct, vs = (size_t)vsize, at;
#define MLD_ALIGN8(x) (((x) + 7) & ~(size_t)7)
        at = MLD_ALIGN8((ns + 1) * sizeof(double));
        w->off_dist = at;
        at += MLD_ALIGN8((nd + 1) * sizeof(MldTable));
        w->off_key = at;
        at += MLD_ALIGN8((size_t)ksize + 1);
        w->off_ts = at;
        at += MLD_WIN_INLINE * sizeof(int64_t);
        w->off_sums = at;
        at += MLD_WIN_INLINE * (ns + 1) * sizeof(double);
        w->off_vals = at;
        at += MLD_ALIGN8(MLD_WIN_INLINE * (nd * vs + 1));
        w->off_mask = at;
        at += MLD_ALIGN8(MLD_WIN_INLINE * (nd + 1));
        w->off_dslots = at;
        at += nd * MLD_WIN_DISTINCT_INLINE * sizeof(MldSlot);
        w->off_dkeys = at;
        at += MLD_ALIGN8(nd * MLD_WIN_DISTINCT_INLINE * vs);
        w->block_size = at;
#undef MLD_ALIGN8
    }
    return mld_btab_init(&w->keys, (size_t)ksize, 1024);
}

void mld_winset_free(MldWinSet *w)
{
    for (size_t i = 0; i < w->nwins; i++)
        if (w->wins[i].live)
            win_release(w, (int32_t)i);
    for (size_t c = 0; c < w->nchunks; c++)
        PyMem_Free(w->chunks[c]);
    PyMem_Free(w->chunks);
    w->chunks = NULL;
    w->nchunks = 0;
    PyMem_Free(w->wins);
    PyMem_Free(w->free_ids);
    mld_btab_free(&w->keys);
    w->wins = NULL;
    w->free_ids = NULL;
    w->nwins = w->capwins = w->nfree = 0;
}

int mld_get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                      Py_ssize_t n, Py_ssize_t per_row, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->len != n * per_row * itemsize) {
        PyErr_Format(PyExc_ValueError, "Windows.add: %s has %zd bytes, expected %zd", what,
                     view->len, n * per_row * itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *windows_add(WindowsObject *self, PyObject *args)
{
    MldWinSet *w = &self->s;
    PyObject *o[9];
    Py_buffer b[9];
    int got = 0, ok = 0;
    Py_ssize_t n, nd = w->n_distinct, ns = w->n_sums;

    if (!PyArg_ParseTuple(args, "nOOOOOOOOO", &n, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &o[7], &o[8]))
        return NULL;
    /* keys, ts, sums, values, value mask, select; out count, out sums, out distinct */
    if (mld_get_buffer(o[0], &b[0], 0, 1, n, w->ksize, "keys") < 0)
        goto done;
    got = 1;
    if (mld_get_buffer(o[1], &b[1], 0, 8, n, 1, "ts") < 0)
        goto done;
    got = 2;
    if (mld_get_buffer(o[2], &b[2], 0, 8, n, ns, "sums") < 0)
        goto done;
    got = 3;
    if (mld_get_buffer(o[3], &b[3], 0, 1, n, nd * w->vsize, "values") < 0)
        goto done;
    got = 4;
    if (mld_get_buffer(o[4], &b[4], 0, 1, n, nd, "value mask") < 0)
        goto done;
    got = 5;
    if (mld_get_buffer(o[5], &b[5], 0, 1, n, 1, "select") < 0)
        goto done;
    got = 6;
    if (mld_get_buffer(o[6], &b[6], 1, 8, n, 1, "out count") < 0)
        goto done;
    got = 7;
    if (mld_get_buffer(o[7], &b[7], 1, 8, n, ns, "out sums") < 0)
        goto done;
    got = 8;
    if (mld_get_buffer(o[8], &b[8], 1, 8, n, nd, "out distinct") < 0)
        goto done;
    got = 9;
    {
        const uint8_t *keys = b[0].buf, *vals = b[3].buf, *mask = b[4].buf, *sel = b[5].buf;
        const int64_t *ts = b[1].buf;
        const double *sums = b[2].buf;
        int64_t *count = b[6].buf, *distinct = b[8].buf;
        double *osums = b[7].buf;

        /* Each key is hashed once: when its home slot is prefetched, MLD_PREFETCH_AHEAD
         * records ahead; the hash waits in a ring until the record's turn. */
        uint32_t hashes[2 * MLD_PREFETCH_AHEAD];
        for (Py_ssize_t i = 0; i < n && i < MLD_PREFETCH_AHEAD; i++)
            if (sel[i])
                hashes[i] = mld_btab_hash(&w->keys, keys + i * w->ksize);
        for (Py_ssize_t i = 0; i < n; i++) {
            int32_t id;
            MldKeyWin *k;
            Py_ssize_t ahead = i + MLD_PREFETCH_AHEAD;
            if (ahead < n && sel[ahead]) {
                uint32_t h = mld_btab_hash(&w->keys, keys + ahead * w->ksize);
                hashes[ahead % (2 * MLD_PREFETCH_AHEAD)] = h;
                __builtin_prefetch(&w->keys.slots[h & (w->keys.cap - 1)]);
                __builtin_prefetch(w->keys.keys + (h & (w->keys.cap - 1)) * w->keys.size);
            }
            if (!sel[i])
                continue;
            id = mld_winset_add_hashed(w, keys + i * w->ksize,
                                       hashes[i % (2 * MLD_PREFETCH_AHEAD)], ts[i],
                                       sums + i * ns, vals + i * nd * w->vsize, mask + i * nd);
            if (id < 0) {
                PyErr_NoMemory();
                goto done;
            }
            k = &w->wins[id];
            count[i] = (int64_t)k->len;
            memcpy(osums + i * ns, k->total, (size_t)ns * sizeof(double));
            for (Py_ssize_t d = 0; d < nd; d++)
                distinct[i * nd + d] = (int64_t)k->distinct[d].used;
        }
    }
    ok = 1;
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *windows_stats(WindowsObject *self, PyObject *unused)
{
    MldWinSet *w = &self->s;
    (void)unused;
    return Py_BuildValue("{s:n,s:n,s:L,s:L}", "keys", w->nkeys, "entries", w->total,
                         "evicted_keys", w->evicted_keys, "evicted_entries",
                         w->evicted_entries);
}

static int windows_init(WindowsObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"window_ns",   "n_sums",      "n_distinct", "key_size",
                             "value_size",  "max_keys",    "max_entries_per_key",
                             "max_entries", NULL};
    long long window_ns;
    int n_sums, n_distinct;
    Py_ssize_t ksize, vsize, max_keys, max_per_key, max_entries;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Liinnnnn", kwlist, &window_ns, &n_sums,
                                     &n_distinct, &ksize, &vsize, &max_keys, &max_per_key,
                                     &max_entries))
        return -1;
    if (window_ns <= 0 || n_sums < 0 || n_distinct < 0 || ksize < 1 || vsize < 1 ||
        max_keys < 1 || max_per_key < 1 || max_entries < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "Windows: window_ns, key_size, value_size and every cap must be "
                        "positive, n_sums and n_distinct not negative");
        return -1;
    }
    if (self->s.keys.keys != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Windows: already initialised");
        return -1;
    }
    if (mld_winset_init(&self->s, window_ns, n_sums, n_distinct, ksize, vsize, max_keys,
                        max_per_key, max_entries) < 0) {
        mld_winset_free(&self->s);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void windows_dealloc(WindowsObject *self)
{
    mld_winset_free(&self->s);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef windows_methods[] = {
    {"add", (PyCFunction)windows_add, METH_VARARGS,
     "add(n, keys, ts, sums, values, value_mask, select, out_count, out_sums, out_distinct)"},
    {"stats", (PyCFunction)windows_stats, METH_NOARGS,
     "{keys, entries, evicted_keys, evicted_entries}"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject MldWindowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._flowengine.Windows",
    .tp_basicsize = sizeof(WindowsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sliding windows per key over batches (sniffer/sliding_window.py BatchWindows).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)windows_init,
    .tp_dealloc = (destructor)windows_dealloc,
    .tp_methods = windows_methods,
};

/* pack_addresses(addrs, out): each bytes of 4 or 16 bytes of the list addrs as a row of
 * out ((n, 17) uint8, C-contiguous): its length, then its bytes, zero-padded to 16
 * (sniffer.batch_windows.address_keys). */
PyObject *mld_py_pack_addresses(PyObject *mod, PyObject *args)
{
    PyObject *addrs, *obj;
    Py_buffer out;
    Py_ssize_t n;
    (void)mod;

    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &addrs, &obj))
        return NULL;
    n = PyList_GET_SIZE(addrs);
    if (mld_get_buffer(obj, &out, 1, 1, n, 17, "out") < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(addrs, i);
        uint8_t *row = (uint8_t *)out.buf + i * 17;
        Py_ssize_t len;
        if (!PyBytes_Check(a) || ((len = PyBytes_GET_SIZE(a)) != 4 && len != 16)) {
            PyErr_Format(PyExc_ValueError,
                         "pack_addresses: item %zd is not an address of 4 or 16 bytes", i);
            PyBuffer_Release(&out);
            return NULL;
        }
        memset(row, 0, 17);
        row[0] = (uint8_t)len;
        memcpy(row + 1, PyBytes_AS_STRING(a), (size_t)len);
    }
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}
