/* native/flow_table.c — hash table and LRU list of live flows (see flow_table.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "flow_table.h"

#define MLD_INITIAL_NODES 4096u

static struct mld_slot *alloc_slots(__u32 count)
{
    struct mld_slot *s = malloc((size_t)count * sizeof(*s));
    __u32 i;

    if (s == NULL)
        return NULL;
    for (i = 0; i < count; i++)
        s[i].node = MLD_NIL;
    return s;
}

/* 16 random bytes for the hash seed: getrandom() (never blocks once the pool is ready,
 * which is long before a capture is read); where it is missing (ENOSYS in an old seccomp
 * sandbox), the clock, pid and addresses, which at least differ per table and run. */
static void draw_seed(struct mld_table *t)
{
    size_t got = 0;

    while (got < sizeof(t->seed)) {
        ssize_t n = getrandom((char *)t->seed + got, sizeof(t->seed) - got, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)n;
    }
    if (got < sizeof(t->seed)) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        t->seed[0] ^= ((__u64)ts.tv_sec << 32) ^ (__u64)ts.tv_nsec ^ (__u64)(uintptr_t)t;
        t->seed[1] ^= mld_mum((__u64)getpid() ^ (__u64)(uintptr_t)&ts, 0x9e3779b97f4a7c15ULL);
    }
}

int mld_table_init(struct mld_table *t, __u32 max_flows)
{
    __u32 nodes = max_flows < MLD_INITIAL_NODES ? max_flows : MLD_INITIAL_NODES;

    memset(t, 0, sizeof(*t));
    draw_seed(t);
    t->max_flows = max_flows;
    t->free_head = MLD_NIL;
    t->lru_head = MLD_NIL;
    t->lru_tail = MLD_NIL;
    t->nodes = malloc((size_t)nodes * sizeof(*t->nodes));
    t->slots = alloc_slots(2 * MLD_INITIAL_NODES);
    if (t->nodes == NULL || t->slots == NULL) {
        mld_table_free(t);
        return -1;
    }
    t->nodes_cap = nodes;
    t->mask = 2 * MLD_INITIAL_NODES - 1;
    return 0;
}

void mld_table_free(struct mld_table *t)
{
    free(t->nodes);
    free(t->slots);
    t->nodes = NULL;
    t->slots = NULL;
    t->nodes_cap = 0;
    t->live = 0;
}

__u32 mld_table_find(struct mld_table *t, const struct mld_flow_key *key, __u64 hash)
{
    __u32 tag = (__u32)hash;
    __u32 i = tag & t->mask;

    t->lookups++;
    for (;;) {
        const struct mld_slot *s = &t->slots[i];

        t->probes++;
        if (s->node == MLD_NIL)
            return MLD_NIL;
        if (s->tag == tag && mld_key_equal(&t->nodes[s->node].key, key))
            return s->node;
        i = (i + 1) & t->mask;
    }
}

static void place(struct mld_slot *slots, __u32 mask, __u32 node, __u32 tag)
{
    __u32 i = tag & mask;

    while (slots[i].node != MLD_NIL)
        i = (i + 1) & mask;
    slots[i].node = node;
    slots[i].tag = tag;
}

/* Double the slot array (kept at most half full) and re-place every live node. */
static int grow_slots(struct mld_table *t)
{
    __u32 count = (t->mask + 1) * 2;
    struct mld_slot *s = alloc_slots(count);
    __u32 i;

    if (s == NULL)
        return -1;
    for (i = 0; i <= t->mask; i++) {
        if (t->slots[i].node != MLD_NIL)
            place(s, count - 1, t->slots[i].node, t->slots[i].tag);
    }
    free(t->slots);
    t->slots = s;
    t->mask = count - 1;
    return 0;
}

static __u32 alloc_node(struct mld_table *t)
{
    __u32 idx;

    if (t->free_head != MLD_NIL) {
        idx = t->free_head;
        t->free_head = t->nodes[idx].next;
        return idx;
    }
    if (t->nodes_used == t->nodes_cap) {
        __u64 cap = (__u64)t->nodes_cap * 2;
        struct mld_node *n;

        if (cap > t->max_flows)
            cap = t->max_flows;
        if (cap <= t->nodes_cap)
            return MLD_NIL;
        n = realloc(t->nodes, (size_t)cap * sizeof(*n));
        if (n == NULL)
            return MLD_NIL;
        t->nodes = n;
        t->nodes_cap = (__u32)cap;
    }
    return t->nodes_used++;
}

__u32 mld_table_insert(struct mld_table *t, const struct mld_flow_key *key, __u64 hash)
{
    __u32 idx;

    if ((__u64)(t->live + 1) * 2 > (__u64)t->mask + 1 && grow_slots(t) != 0)
        return MLD_NIL;
    idx = alloc_node(t);
    if (idx == MLD_NIL)
        return MLD_NIL;
    t->nodes[idx].key = *key;
    t->nodes[idx].hash = hash;
    place(t->slots, t->mask, idx, (__u32)hash);
    mld_lru_append(t, idx);
    t->live++;
    return idx;
}

/* Remove with backward-shift deletion, so lookups never need tombstones. */
void mld_table_remove(struct mld_table *t, __u32 idx)
{
    __u32 mask = t->mask;
    __u32 i = (__u32)t->nodes[idx].hash & mask;
    __u32 j;

    while (t->slots[i].node != idx)
        i = (i + 1) & mask;
    for (j = (i + 1) & mask; t->slots[j].node != MLD_NIL; j = (j + 1) & mask) {
        __u32 home = t->slots[j].tag & mask;

        /* Move j back into the hole at i unless its home lies in (i, j]. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].node = MLD_NIL;
    mld_lru_unlink(t, idx);
    t->nodes[idx].next = t->free_head;
    t->free_head = idx;
    t->live--;
}
