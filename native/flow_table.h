/* native/flow_table.h — the user-space flow table: struct mld_flow_key -> struct mld_flow_state.
 *
 * Open addressing with linear probing over a power-of-two slot array (at most half full),
 * entries in a node pool addressed by 32-bit index, and a doubly linked LRU list in packet
 * arrival order (head = least recently seen) that drives idle expiry and eviction. Memory
 * grows by doubling up to max_flows nodes; nothing is allocated per packet.
 */
#ifndef MLD_FLOW_TABLE_H
#define MLD_FLOW_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "flow_types.h"

#define MLD_NIL UINT32_MAX

struct mld_node {
    struct mld_flow_key key;
    struct mld_flow_state state;
    __u64 hash;
    __u32 prev; /* LRU neighbours; in the free list, next links free nodes */
    __u32 next;
};

struct mld_slot {
    __u32 node; /* MLD_NIL when empty */
    __u32 tag;  /* low 32 bits of the key's hash */
};

struct mld_table {
    struct mld_node *nodes;
    __u32 nodes_cap;  /* allocated nodes */
    __u32 nodes_used; /* high-water mark of handed-out nodes */
    __u32 free_head;  /* free list of returned nodes */
    struct mld_slot *slots;
    __u32 mask;       /* slot count - 1 */
    __u32 live;
    __u32 max_flows;
    __u32 lru_head;   /* least recently seen */
    __u32 lru_tail;   /* most recently seen */
    __u64 seed[2];    /* of mld_key_hash, from getrandom() at init: placement unguessable */
    __u64 lookups;    /* mld_table_find calls */
    __u64 probes;     /* slots they examined (probes / lookups: 1-3 when hashing spreads) */
};

/* 0 on success, -1 when out of memory. Draws the hash seed from getrandom(). */
int mld_table_init(struct mld_table *t, __u32 max_flows);
void mld_table_free(struct mld_table *t);

/* Node index of the key, or MLD_NIL. */
__u32 mld_table_find(struct mld_table *t, const struct mld_flow_key *key, __u64 hash);
/* Add an absent key at the LRU tail (caller keeps live < max_flows); the node's state is
 * left for the caller to fill. Returns the node index, or MLD_NIL when out of memory. */
__u32 mld_table_insert(struct mld_table *t, const struct mld_flow_key *key, __u64 hash);
void mld_table_remove(struct mld_table *t, __u32 idx);

static inline void mld_lru_unlink(struct mld_table *t, __u32 idx)
{
    struct mld_node *n = &t->nodes[idx];

    if (n->prev != MLD_NIL)
        t->nodes[n->prev].next = n->next;
    else
        t->lru_head = n->next;
    if (n->next != MLD_NIL)
        t->nodes[n->next].prev = n->prev;
    else
        t->lru_tail = n->prev;
}

static inline void mld_lru_append(struct mld_table *t, __u32 idx)
{
    struct mld_node *n = &t->nodes[idx];

    n->prev = t->lru_tail;
    n->next = MLD_NIL;
    if (t->lru_tail != MLD_NIL)
        t->nodes[t->lru_tail].next = idx;
    else
        t->lru_head = idx;
    t->lru_tail = idx;
}

/* Move a node to the LRU tail: it just saw a packet. */
static inline void mld_table_touch(struct mld_table *t, __u32 idx)
{
    if (t->lru_tail == idx)
        return;
    mld_lru_unlink(t, idx);
    mld_lru_append(t, idx);
}

/* 64-bit hash of a canonical key: multiply-fold mixing of its five 64-bit words (wyhash's
 * mum construction), keyed by the table's random seed. Used for table placement only; flow
 * ids use FNV-1a (flowengine.c). Unseeded, anyone could pick ports whose flows all share
 * one slot and make every lookup walk the whole cluster (hash flooding: 10k such flows
 * made the engine 18x slower; tests/native/test_hash_flood.py). */
static inline __u64 mld_mum(__u64 a, __u64 b)
{
    __uint128_t r = (__uint128_t)a * b;

    return (__u64)r ^ (__u64)(r >> 64);
}

static inline __u64 mld_key_hash(const struct mld_table *t, const struct mld_flow_key *key)
{
    __u64 w[5];

    _Static_assert(sizeof(struct mld_flow_key) == sizeof(w), "flow key is five 64-bit words");
    memcpy(w, key, sizeof(w));
    __u64 h = mld_mum(w[0] ^ t->seed[0] ^ 0xa0761d6478bd642fULL,
                      w[1] ^ t->seed[1] ^ 0xe7037ed1a0b428dbULL);
    h = mld_mum(h ^ w[2] ^ 0x8ebc6af09c88c6e3ULL, w[3] ^ t->seed[0] ^ 0x589965cc75374cc3ULL);
    return mld_mum(h ^ w[4] ^ t->seed[1], 0x1d8e4e27c47d124fULL);
}

static inline int mld_key_equal(const struct mld_flow_key *a, const struct mld_flow_key *b)
{
    __u64 x[5], y[5];

    memcpy(x, a, sizeof(x));
    memcpy(y, b, sizeof(y));
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

#endif /* MLD_FLOW_TABLE_H */
