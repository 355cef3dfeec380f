/* native/windows.h — sliding windows per key over batches (windows.c), and the C API the
 * other batch windows (fastwin.c) are built on. */
#ifndef MLD_WINDOWS_H
#define MLD_WINDOWS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* native._flowengine.Windows; see windows.c and sniffer/sliding_window.py. */
extern PyTypeObject MldWindowsType;

/* A slot: its value (0: empty) and the low 32 bits of its key's hash. */
typedef struct {
    int32_t val;
    uint32_t hash;
} MldSlot;

/* An open-addressing table (linear probing) of fixed-size byte strings -> int32. */
typedef struct {
    size_t cap; /* power of two, 0 when unallocated */
    size_t used;
    size_t size;    /* bytes per key */
    uint8_t *keys;  /* cap * size */
    MldSlot *slots; /* cap */
    int borrowed;   /* keys and slots are a window's inline storage: never freed */
} MldTable;

int mld_btab_init(MldTable *t, size_t size, size_t cap);
void mld_btab_free(MldTable *t);
/* Slot of key, or of the empty slot where it would go. */
size_t mld_btab_slot(const MldTable *t, const uint8_t *key);
/* The hash the table places key by (the same for every table of keys of that size). */
uint32_t mld_btab_hash(const MldTable *t, const uint8_t *key);
/* mld_btab_slot and mld_btab_upsert for a key whose hash (mld_btab_hash) is known. */
size_t mld_btab_slot_hashed(const MldTable *t, const uint8_t *key, uint32_t h);
int32_t *mld_btab_upsert_hashed(MldTable *t, const uint8_t *key, uint32_t h, int *fresh);
/* Pointer to key's value, inserted (value 0, the caller sets it) if new; NULL on memory
 * error. *fresh tells whether it was inserted. */
int32_t *mld_btab_upsert(MldTable *t, const uint8_t *key, int *fresh);
void mld_btab_remove_slot(MldTable *t, size_t i);
/* Prefetch the home slot of key (a hint for batch loops; reads and changes nothing). */
void mld_btab_prefetch(const MldTable *t, const uint8_t *key);
/* The same for a key whose hash (mld_btab_hash) is known. */
void mld_btab_prefetch_hashed(const MldTable *t, uint32_t h);
/* How many records ahead batch loops prefetch. */
#define MLD_PREFETCH_AHEAD 8

/* One key's window: a ring of entries in insertion order. */
typedef struct {
    int64_t *ts;
    double *sums;    /* cap * n_sums */
    uint8_t *vals;   /* cap * n_distinct * vsize */
    uint8_t *mask;   /* cap * n_distinct */
    size_t cap, head, len;
    double *total;     /* n_sums running sums */
    MldTable *distinct; /* n_distinct tables value -> count */
    int64_t newest;
    uint8_t *key;       /* ksize bytes */
    uint32_t hash;      /* key's hash in the set's table */
    int32_t prev, next; /* LRU list, -1 at the ends */
    int live;
} MldKeyWin;

/* A window's first storage comes from its set's arena, not from malloc: each window id owns
 * a fixed block (its running sums, distinct-count tables of MLD_WIN_DISTINCT_INLINE slots,
 * its key and a ring of MLD_WIN_INLINE entries), carved from chunks of MLD_WIN_CHUNK blocks
 * that never move. A new key, or a key reusing an evicted key's id, allocates nothing;
 * only a window that outgrows its block goes to the heap (and gives that back when it is
 * forgotten). */
#define MLD_WIN_INLINE 4
#define MLD_WIN_DISTINCT_INLINE 8
#define MLD_WIN_CHUNK 256

/* Windows of many keys (SlidingWindows), bounded in keys and entries. */
typedef struct {
    int64_t window_ns;
    int n_sums, n_distinct;
    Py_ssize_t ksize, vsize;
    Py_ssize_t max_keys, max_per_key, max_entries;
    MldTable keys; /* key bytes -> window index + 1 */
    MldKeyWin *wins;
    size_t nwins, capwins;
    int32_t *free_ids;
    size_t nfree;
    int32_t lru_head, lru_tail; /* head: least recently updated */
    uint8_t **chunks;           /* the arena: chunks of MLD_WIN_CHUNK blocks */
    size_t nchunks, block_size;
    size_t off_dist, off_key, off_ts, off_sums, off_vals, off_mask, off_dslots, off_dkeys;
    Py_ssize_t nkeys, total;
    long long evicted_keys, evicted_entries;
} MldWinSet;

int mld_winset_init(MldWinSet *w, int64_t window_ns, int n_sums, int n_distinct,
                    Py_ssize_t ksize, Py_ssize_t vsize, Py_ssize_t max_keys,
                    Py_ssize_t max_per_key, Py_ssize_t max_entries);
void mld_winset_free(MldWinSet *w);
/* SlidingWindows.add: the window's index, or -1 on memory error. */
int32_t mld_winset_add(MldWinSet *w, const uint8_t *key, int64_t ts, const double *sums,
                       const uint8_t *vals, const uint8_t *mask);
/* mld_winset_add for a key whose hash (mld_btab_hash on the set's keys) is known. */
int32_t mld_winset_add_hashed(MldWinSet *w, const uint8_t *key, uint32_t h, int64_t ts,
                              const double *sums, const uint8_t *vals, const uint8_t *mask);
/* mld_winset_find for a key whose hash is known. */
int32_t mld_winset_find_hashed(const MldWinSet *w, const uint8_t *key, uint32_t h);
/* The index of key's window, or -1 (a look-up that adds no entry and moves nothing). */
int32_t mld_winset_find(const MldWinSet *w, const uint8_t *key);
/* SlidingWindows.peek(key, ts) on the window at index id. */
void mld_winset_peek(MldWinSet *w, int32_t id, int64_t ts);

/* A C-contiguous buffer of n rows of per_row items of itemsize bytes, or -1 with
 * ValueError naming what. */
int mld_get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                   Py_ssize_t n, Py_ssize_t per_row, const char *what);

/* pack_addresses(addrs, out): addresses (bytes of 4 or 16) as (n, 17) length + bytes rows. */
PyObject *mld_py_pack_addresses(PyObject *mod, PyObject *args);

#endif /* MLD_WINDOWS_H */
