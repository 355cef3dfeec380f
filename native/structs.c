/* native/structs.c — the layout of xdp/flow_types.h's structs and its constants, for Python.
 *
 * The one place Python learns how the flow engine's structs are laid out: the C compiler
 * computes every offset and size (offsetof/sizeof) and names every member's type
 * (_Generic), so padding and widths are never restated by hand. native/structs.py builds
 * the NumPy dtypes and ctypes classes that every reader uses (the offline engine's arrays,
 * the ring buffer's records, the flow map, the XDP counters, the blocklist's key and value)
 * from mld_py_structs(), and its constants from mld_py_constants().
 *
 * A member left out of a table below is caught by tests/native (the members listed must
 * tile each struct exactly); a member whose type has no name here fails to compile.
 */
#include "structs.h" /* Python.h first */

#include <stddef.h>

#include "flow_types.h"

struct member {
    const char *name;
    size_t offset;
    size_t size;  /* of one element */
    size_t count; /* 1 for scalars, the length for arrays */
    const char *type;
};

/* The C type of an expression, spelled as in flow_types.h (no default: unknown types fail
 * to compile). */
#define CTYPE(x)                                                                             \
    _Generic((x),                                                                            \
        __u8: "__u8",                                                                        \
        __u16: "__u16",                                                                      \
        __u32: "__u32",                                                                      \
        __u64: "__u64",                                                                      \
        struct mld_flow_key: "struct mld_flow_key",                                          \
        struct mld_dir_stats: "struct mld_dir_stats",                                        \
        struct mld_flow_state: "struct mld_flow_state")

#define M(S, m) ((struct S *)0)->m
/* A scalar or nested struct member; an array here fails to compile (it has no CTYPE). */
#define SCALAR(S, m) {#m, offsetof(struct S, m), sizeof(M(S, m)), 1, CTYPE(M(S, m))}
/* An array member; a scalar here fails to compile (it cannot be subscripted). */
#define ARRAY(S, m)                                                                          \
    {#m, offsetof(struct S, m), sizeof(M(S, m)[0]), sizeof(M(S, m)) / sizeof(M(S, m)[0]),    \
     CTYPE(M(S, m)[0])}

static const struct member flow_key[] = {
    ARRAY(mld_flow_key, addr_lo),
    ARRAY(mld_flow_key, addr_hi),
    SCALAR(mld_flow_key, port_lo),
    SCALAR(mld_flow_key, port_hi),
    SCALAR(mld_flow_key, protocol),
    SCALAR(mld_flow_key, ip_version),
    SCALAR(mld_flow_key, pad),
};

static const struct member dir_stats[] = {
    SCALAR(mld_dir_stats, packets),
    SCALAR(mld_dir_stats, bytes),
    SCALAR(mld_dir_stats, payload_bytes),
    SCALAR(mld_dir_stats, len_sumsq),
    SCALAR(mld_dir_stats, iat_sum_ns),
    SCALAR(mld_dir_stats, iat_min_ns),
    SCALAR(mld_dir_stats, iat_max_ns),
    SCALAR(mld_dir_stats, iat_sumsq),
    SCALAR(mld_dir_stats, last_ts_ns),
    SCALAR(mld_dir_stats, len_min),
    SCALAR(mld_dir_stats, len_max),
    SCALAR(mld_dir_stats, syn),
    SCALAR(mld_dir_stats, fin),
    SCALAR(mld_dir_stats, rst),
    SCALAR(mld_dir_stats, psh),
    SCALAR(mld_dir_stats, ack),
    SCALAR(mld_dir_stats, urg),
    SCALAR(mld_dir_stats, ece),
    SCALAR(mld_dir_stats, cwr),
    SCALAR(mld_dir_stats, init_window),
    SCALAR(mld_dir_stats, pad),
};

static const struct member flow_state[] = {
    ARRAY(mld_flow_state, dir),
    SCALAR(mld_flow_state, first_ts_ns),
    SCALAR(mld_flow_state, last_ts_ns),
    SCALAR(mld_flow_state, flags),
    SCALAR(mld_flow_state, vlan_id),
    SCALAR(mld_flow_state, icmp_type),
    SCALAR(mld_flow_state, icmp_code),
    SCALAR(mld_flow_state, end_reason),
    SCALAR(mld_flow_state, dns_qname_len),
    ARRAY(mld_flow_state, pad),
    SCALAR(mld_flow_state, dns_queries),
    SCALAR(mld_flow_state, dns_qname_len_sum),
    ARRAY(mld_flow_state, dns_qname),
    SCALAR(mld_flow_state, frag_count),
    SCALAR(mld_flow_state, tiny_frag_count),
    SCALAR(mld_flow_state, overlap_frag_count),
    SCALAR(mld_flow_state, frag_id),
    SCALAR(mld_flow_state, frag_lo),
    SCALAR(mld_flow_state, frag_hi),
    SCALAR(mld_flow_state, init_isn),
    SCALAR(mld_flow_state, resp_isn),
    SCALAR(mld_flow_state, interim_ts_ns),
};

static const struct member flow_event[] = {
    SCALAR(mld_flow_event, key),
    SCALAR(mld_flow_event, state),
};

static const struct member flow_config[] = {
    SCALAR(mld_flow_config, idle_timeout_ns),
    SCALAR(mld_flow_config, active_timeout_ns),
    SCALAR(mld_flow_config, interim_ns),
};

static const struct member xdp_stats[] = {
    SCALAR(mld_xdp_stats, packets),
    SCALAR(mld_xdp_stats, bytes),
    SCALAR(mld_xdp_stats, parse_errors),
    SCALAR(mld_xdp_stats, non_ip),
    SCALAR(mld_xdp_stats, ringbuf_drops),
    SCALAR(mld_xdp_stats, flows_created),
    SCALAR(mld_xdp_stats, flows_exported),
    SCALAR(mld_xdp_stats, blocked_packets),
    SCALAR(mld_xdp_stats, blocked_bytes),
    SCALAR(mld_xdp_stats, parse_truncated),
    SCALAR(mld_xdp_stats, parse_malformed),
    SCALAR(mld_xdp_stats, parse_bad_length),
    SCALAR(mld_xdp_stats, parse_ext_limit),
    SCALAR(mld_xdp_stats, parse_dropped),
    SCALAR(mld_xdp_stats, fragments),
    SCALAR(mld_xdp_stats, tiny_fragments),
    SCALAR(mld_xdp_stats, rpf_dropped),
    SCALAR(mld_xdp_stats, interim_exported),
    SCALAR(mld_xdp_stats, interim_dropped),
    SCALAR(mld_xdp_stats, flows_summarised),
    SCALAR(mld_xdp_stats, summary_lost),
    SCALAR(mld_xdp_stats, src_summary_lost),
    SCALAR(mld_xdp_stats, overload_admitted),
    SCALAR(mld_xdp_stats, overload_by_rate),
    SCALAR(mld_xdp_stats, overload_by_ringbuf),
    SCALAR(mld_xdp_stats, overload_by_table),
};

static const struct member overload_config[] = {
    SCALAR(mld_overload_config, window_ns),
    SCALAR(mld_overload_config, hold_ns),
    SCALAR(mld_overload_config, max_new_flows),
    SCALAR(mld_overload_config, ringbuf_high),
    SCALAR(mld_overload_config, table_high),
    SCALAR(mld_overload_config, admit_after),
    SCALAR(mld_overload_config, src_prefix4),
    SCALAR(mld_overload_config, src_prefix6),
    SCALAR(mld_overload_config, enabled),
    SCALAR(mld_overload_config, gen),
    ARRAY(mld_overload_config, pad),
};

static const struct member overload_state[] = {
    SCALAR(mld_overload_state, window_start_ns),
    SCALAR(mld_overload_state, window_new),
    SCALAR(mld_overload_state, until_ns),
    SCALAR(mld_overload_state, inserted),
    SCALAR(mld_overload_state, deleted),
    SCALAR(mld_overload_state, submitted),
};

static const struct member overload_user[] = {
    SCALAR(mld_overload_user, user_deleted),
    SCALAR(mld_overload_user, evicted),
    SCALAR(mld_overload_user, consumed),
};

static const struct member flood_key[] = {
    ARRAY(mld_flood_key, addr),
    SCALAR(mld_flood_key, port),
    SCALAR(mld_flood_key, protocol),
    SCALAR(mld_flood_key, kind),
    SCALAR(mld_flood_key, prefix_len),
    SCALAR(mld_flood_key, ip_version),
    SCALAR(mld_flood_key, gen),
    SCALAR(mld_flood_key, pad),
};

static const struct member flood_stats[] = {
    SCALAR(mld_flood_stats, flows),
    SCALAR(mld_flood_stats, packets),
    SCALAR(mld_flood_stats, bytes),
    SCALAR(mld_flood_stats, syn),
    SCALAR(mld_flood_stats, first_ts_ns),
    SCALAR(mld_flood_stats, last_ts_ns),
};

static const struct member lpm_key[] = {
    SCALAR(mld_lpm_key, prefixlen),
    ARRAY(mld_lpm_key, addr),
};

static const struct member block[] = {
    SCALAR(mld_block, drops),
    SCALAR(mld_block, expires_ns),
};

struct layout {
    const char *name;
    size_t size;
    const struct member *members;
    size_t n;
};

#define LAYOUT(S, table) {#S, sizeof(struct S), table, sizeof(table) / sizeof(table[0])}

/* Nested structs come before the structs that hold them. */
static const struct layout layouts[] = {
    LAYOUT(mld_flow_key, flow_key),
    LAYOUT(mld_dir_stats, dir_stats),
    LAYOUT(mld_flow_state, flow_state),
    LAYOUT(mld_flow_event, flow_event),
    LAYOUT(mld_flow_config, flow_config),
    LAYOUT(mld_xdp_stats, xdp_stats),
    LAYOUT(mld_overload_config, overload_config),
    LAYOUT(mld_overload_state, overload_state),
    LAYOUT(mld_overload_user, overload_user),
    LAYOUT(mld_flood_key, flood_key),
    LAYOUT(mld_flood_stats, flood_stats),
    LAYOUT(mld_lpm_key, lpm_key),
    LAYOUT(mld_block, block),
};

/* Every integer #define of flow_types.h (tests/native checks that none is missing). */
#define CONST(c) {#c, (unsigned long long)(c)}
static const struct {
    const char *name;
    unsigned long long value;
} constants[] = {
    CONST(MLD_END_FIN),
    CONST(MLD_END_RST),
    CONST(MLD_END_IDLE_TIMEOUT),
    CONST(MLD_END_ACTIVE_TIMEOUT),
    CONST(MLD_END_EVICTED),
    CONST(MLD_END_CAPTURE_END),
    CONST(MLD_F_INITIATOR_LO),
    CONST(MLD_F_FIN_FWD),
    CONST(MLD_F_FIN_BWD),
    CONST(MLD_F_RST),
    CONST(MLD_F_L4),
    CONST(MLD_F_INIT_SYN),
    CONST(MLD_F_SYNACK),
    CONST(MLD_F_HS_CONFLICT),
    CONST(MLD_F_HS_VERIFIED),
    CONST(MLD_F_INTERIM),
    CONST(MLD_F_FLOOD),
    CONST(MLD_TCP_FIN),
    CONST(MLD_TCP_SYN),
    CONST(MLD_TCP_RST),
    CONST(MLD_TCP_PSH),
    CONST(MLD_TCP_ACK),
    CONST(MLD_TCP_URG),
    CONST(MLD_TCP_ECE),
    CONST(MLD_TCP_CWR),
    CONST(MLD_PROTO_TCP),
    CONST(MLD_PROTO_UDP),
    CONST(MLD_PROTO_ICMP),
    CONST(MLD_PROTO_ICMPV6),
    CONST(MLD_IAT_SQ_SHIFT),
    CONST(MLD_DNS_NAME_MAX),
    CONST(MLD_MAX_ACTIVE_TIMEOUT_NS),
    CONST(MLD_BLOCK_NEVER),
    CONST(MLD_FRAG_IS),
    CONST(MLD_FRAG_TINY),
    CONST(MLD_FLOOD_DST),
    CONST(MLD_FLOOD_SRC),
    CONST(MLD_FLOOD_REPLY),
};

static PyObject *members(const struct layout *l)
{
    PyObject *list = PyList_New((Py_ssize_t)l->n);
    size_t i;

    if (list == NULL)
        return NULL;
    for (i = 0; i < l->n; i++) {
        const struct member *m = &l->members[i];
        PyObject *t = Py_BuildValue("(snnns)", m->name, (Py_ssize_t)m->offset,
                                    (Py_ssize_t)m->size, (Py_ssize_t)m->count, m->type);

        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

PyObject *mld_py_structs(PyObject *mod, PyObject *unused)
{
    PyObject *out = PyDict_New();
    size_t i;

    (void)mod;
    (void)unused;
    if (out == NULL)
        return NULL;
    for (i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++) {
        PyObject *v = Py_BuildValue("(nN)", (Py_ssize_t)layouts[i].size, members(&layouts[i]));

        if (v == NULL || PyDict_SetItemString(out, layouts[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

PyObject *mld_py_constants(PyObject *mod, PyObject *unused)
{
    PyObject *out = PyDict_New();
    size_t i;

    (void)mod;
    (void)unused;
    if (out == NULL)
        return NULL;
    for (i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(constants[i].value);

        if (v == NULL || PyDict_SetItemString(out, constants[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}
