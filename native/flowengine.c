/* native/flowengine.c — CPython bindings of the offline flow engine (native._flowengine).
 *
 * Thin layer: native/structs.py builds the NumPy dtypes from structs() (structs.c) and
 * native/__init__.py owns the error classes and the generator; this file moves exported
 * struct mld_flow_event records into NumPy arrays and releases the GIL while packets are
 * read.
 */
#include "structs.h" /* Python.h first */
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <string.h>

#include "engine.h"
#include "jsonnum.h"
#include "protowire.h"
#include "windows.h"
#include "fastwin.h"
#include "link_layer.h"

static PyObject *py_supported_linktypes(PyObject *mod, PyObject *unused)
{
    size_t n = sizeof(mld_supported_dlts) / sizeof(mld_supported_dlts[0]);
    PyObject *list = PyList_New((Py_ssize_t)n);
    size_t i;

    (void)mod;
    (void)unused;
    if (list == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        const char *name = mld_dlt_name(mld_supported_dlts[i]);
        PyObject *s = PyUnicode_FromString(name != NULL ? name : "unknown");

        if (s == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

/* Flow id: FNV-1a 64 over the 40 key bytes then the 8 bytes of first_ts_ns, as laid out in
 * struct mld_flow_event (little-endian). The key's pad counts as 0 whatever it holds: the
 * engine and XDP write 0 there, but NumPy leaves unnamed bytes uninitialized when it copies
 * an events array (np.concatenate, astype), and the id must not depend on them. */
static __u64 flow_id(const struct mld_flow_event *ev)
{
    const __u8 *k = (const __u8 *)&ev->key;
    __u8 ts[8];
    __u64 h = 0xcbf29ce484222325ULL;
    size_t i;

    memcpy(ts, &ev->state.first_ts_ns, 8);
    for (i = 0; i < sizeof(ev->key); i++)
        h = (h ^ k[i]) * 0x100000001b3ULL;
    for (i = 0; i < 8; i++)
        h = (h ^ ts[i]) * 0x100000001b3ULL;
    return h;
}

static PyObject *py_flow_ids(PyObject *mod, PyObject *arg)
{
    PyArrayObject *in, *out;
    npy_intp n, i;
    const char *src;
    __u64 *dst;

    (void)mod;
    if (!PyArray_Check(arg) || PyArray_NDIM((PyArrayObject *)arg) != 1 ||
        PyArray_ITEMSIZE((PyArrayObject *)arg) != (npy_intp)sizeof(struct mld_flow_event)) {
        PyErr_SetString(PyExc_TypeError, "flow_ids expects a 1-D array of EVENT_DTYPE");
        return NULL;
    }
    in = PyArray_GETCONTIGUOUS((PyArrayObject *)arg);
    if (in == NULL)
        return NULL;
    n = PyArray_DIM(in, 0);
    out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_UINT64);
    if (out == NULL) {
        Py_DECREF(in);
        return NULL;
    }
    src = PyArray_DATA(in);
    dst = PyArray_DATA(out);
    for (i = 0; i < n; i++) {
        struct mld_flow_event ev;

        memcpy(&ev, src + i * (npy_intp)sizeof(ev), sizeof(ev));
        ev.key.pad = 0;
        dst[i] = flow_id(&ev);
    }
    Py_DECREF(in);
    return (PyObject *)out;
}

/* ---- Packed rows (proto/flowpack.py) straight from events ------------------------------
 *
 * events_to_rows(events, rows, offsets) -> (src_addrs, dst_addrs): what the sniffer's
 * records.flow_columns + pack_records compute from an events array, written into rows of
 * proto.flowpack.PACKED_DTYPE in one pass (the record's key, scalars, both directions with
 * their derived lengths and gaps, the handshake/interim flag bits), and the record's
 * addresses as bytes (4 for IPv4, 16 for IPv6). The row layout is not restated here:
 * packed_fields() names the columns this code writes and their type, and Python passes
 * each one's offset in PACKED_DTYPE (native/__init__.py checks names, kinds and widths).
 * Floats are computed in double in the same order as records.py's NumPy expressions and
 * rounded once to float32, as NumPy's cast does, so both paths give the same bits
 * (tests/sniffer/test_native_pack.py). Columns this code does not name (context, fast
 * score and rule, strings) are left as they are. */

enum pack_kind { PK_UINT = 'u', PK_FLOAT = 'f', PK_ADDR = 'a' };

struct pack_field {
    const char *name;
    char kind;
    int width;
};

enum {
    PF_FLOW_ID, PF_FIRST_TS, PF_LAST_TS, PF_SRC_PORT, PF_DST_PORT, PF_PROTOCOL,
    PF_END_REASON, PF_VLAN_ID, PF_FRAG, PF_TINY_FRAG, PF_OVERLAP_FRAG, PF_IP_VERSION,
    PF_FLAGS, PF_SRC_ADDR, PF_DST_ADDR, PF_DIR0,
};

/* One direction's columns, in this order behind "fwd." and "bwd.". */
static const struct pack_field dir_fields[] = {
    {"packets", 'u', 8},     {"bytes", 'u', 8},       {"payload_bytes", 'u', 8},
    {"pkt_len_min", 'u', 4}, {"pkt_len_max", 'u', 4}, {"pkt_len_mean", 'f', 4},
    {"pkt_len_std", 'f', 4}, {"iat_min_us", 'f', 4},  {"iat_max_us", 'f', 4},
    {"iat_mean_us", 'f', 4}, {"iat_std_us", 'f', 4},  {"syn_count", 'u', 4},
    {"fin_count", 'u', 4},   {"rst_count", 'u', 4},   {"psh_count", 'u', 4},
    {"ack_count", 'u', 4},   {"urg_count", 'u', 4},   {"ece_count", 'u', 4},
    {"cwr_count", 'u', 4},   {"init_window", 'u', 4},
};
#define N_DIR_FIELDS ((int)(sizeof(dir_fields) / sizeof(dir_fields[0])))
#define N_PACK_FIELDS (PF_DIR0 + 2 * N_DIR_FIELDS)

static const struct pack_field scalar_fields[PF_DIR0] = {
    {"flow_id", 'u', 8},        {"first_ts_ns", 'u', 8},    {"last_ts_ns", 'u', 8},
    {"src_port", 'u', 4},       {"dst_port", 'u', 4},       {"protocol", 'u', 4},
    {"end_reason", 'u', 4},     {"vlan_id", 'u', 4},        {"frag_count", 'u', 4},
    {"tiny_frag_count", 'u', 4}, {"overlap_frag_count", 'u', 4}, {"ip_version", 'u', 1},
    {"flags", 'u', 1},          {"src_addr", 'a', 16},      {"dst_addr", 'a', 16},
};

/* Bits of the row's flags byte this code sets (proto.flowpack.FLAG_BITS, checked there). */
#define PACK_FLAG_HS_VERIFIED 1
#define PACK_FLAG_INTERIM 8

static PyObject *py_packed_fields(PyObject *mod, PyObject *unused)
{
    PyObject *list = PyList_New(N_PACK_FIELDS);
    int i;

    (void)mod;
    (void)unused;
    if (list == NULL)
        return NULL;
    for (i = 0; i < N_PACK_FIELDS; i++) {
        const struct pack_field *f = i < PF_DIR0 ? &scalar_fields[i]
                                                 : &dir_fields[(i - PF_DIR0) % N_DIR_FIELDS];
        PyObject *t;

        if (i < PF_DIR0)
            t = Py_BuildValue("(sCi)", f->name, f->kind, f->width);
        else
            t = PyUnicode_FromFormat("%s.%s", i - PF_DIR0 < N_DIR_FIELDS ? "fwd" : "bwd",
                                     f->name);
        if (t != NULL && i >= PF_DIR0) {
            PyObject *named = Py_BuildValue("(NCi)", t, f->kind, f->width);
            t = named;
        }
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

static inline void put_uint(__u8 *at, int width, __u64 v)
{
    memcpy(at, &v, (size_t)width); /* little-endian host (x86_64, aarch64) */
}

static inline void put_float(__u8 *at, double v)
{
    float f = (float)v;
    memcpy(at, &f, 4);
}

/* One direction: records.py's _direction, the same expressions in the same order. No
 * fused multiply-add (where the CPU has one): NumPy rounds every step. */
__attribute__((optimize("fp-contract=off"))) static void pack_direction(__u8 *row, const Py_ssize_t *off, const struct mld_dir_stats *d)
{
    const double unit = (double)(1 << MLD_IAT_SQ_SHIFT) / 1000.0;
    double packets = (double)d->packets;
    double nonzero = packets > 1.0 ? packets : 1.0;
    double mean = (double)d->bytes / nonzero;
    double var = (double)d->len_sumsq / nonzero - mean * mean;
    int has_gaps = packets >= 2.0;
    double gaps = packets - 1.0 > 1.0 ? packets - 1.0 : 1.0;
    double iat_mean = (double)d->iat_sum_ns / gaps / 1000.0;
    double iat_var = (double)d->iat_sumsq * (unit * unit) / gaps - iat_mean * iat_mean;
    const __u32 counts[] = {d->syn, d->fin, d->rst, d->psh, d->ack,
                            d->urg, d->ece, d->cwr, d->init_window};
    int k;

    put_uint(row + off[0], 8, d->packets);
    put_uint(row + off[1], 8, d->bytes);
    put_uint(row + off[2], 8, d->payload_bytes);
    put_uint(row + off[3], 4, d->len_min);
    put_uint(row + off[4], 4, d->len_max);
    put_float(row + off[5], mean);
    put_float(row + off[6], sqrt(var > 0.0 ? var : 0.0));
    put_float(row + off[7], has_gaps ? (double)d->iat_min_ns / 1000.0 : 0.0);
    put_float(row + off[8], has_gaps ? (double)d->iat_max_ns / 1000.0 : 0.0);
    put_float(row + off[9], has_gaps ? iat_mean : 0.0);
    put_float(row + off[10], has_gaps ? sqrt(iat_var > 0.0 ? iat_var : 0.0) : 0.0);
    for (k = 0; k < 9; k++)
        put_uint(row + off[11 + k], 4, counts[k]);
}

static PyObject *address_bytes(const __u8 *addr, int version)
{
    return version == 4 ? PyBytes_FromStringAndSize((const char *)addr + 12, 4)
                        : PyBytes_FromStringAndSize((const char *)addr, 16);
}

static PyObject *py_events_to_rows(PyObject *mod, PyObject *args)
{
    PyObject *events_obj, *out = NULL, *src_list = NULL, *dst_list = NULL;
    Py_buffer rows, offs;
    PyArrayObject *in = NULL;
    Py_ssize_t n, itemsize, i;
    const Py_ssize_t *off;

    (void)mod;
    if (!PyArg_ParseTuple(args, "Ow*ny*", &events_obj, &rows, &itemsize, &offs))
        return NULL;
    if (!PyArray_Check(events_obj) || PyArray_NDIM((PyArrayObject *)events_obj) != 1 ||
        PyArray_ITEMSIZE((PyArrayObject *)events_obj) !=
            (npy_intp)sizeof(struct mld_flow_event)) {
        PyErr_SetString(PyExc_TypeError, "events_to_rows expects a 1-D array of EVENT_DTYPE");
        goto done;
    }
    if (offs.len != (Py_ssize_t)(N_PACK_FIELDS * sizeof(Py_ssize_t))) {
        PyErr_SetString(PyExc_ValueError, "events_to_rows: one offset per packed_fields()");
        goto done;
    }
    off = (const Py_ssize_t *)offs.buf;
    for (i = 0; i < N_PACK_FIELDS; i++) {
        const struct pack_field *f = i < PF_DIR0 ? &scalar_fields[i]
                                                 : &dir_fields[(i - PF_DIR0) % N_DIR_FIELDS];
        if (off[i] < 0 || itemsize <= 0 || off[i] + f->width > itemsize) {
            PyErr_Format(PyExc_ValueError, "events_to_rows: column %s is out of the row",
                         f->name);
            goto done;
        }
    }
    in = PyArray_GETCONTIGUOUS((PyArrayObject *)events_obj);
    if (in == NULL)
        goto done;
    n = PyArray_DIM(in, 0);
    if (rows.len != n * itemsize) {
        PyErr_SetString(PyExc_ValueError, "events_to_rows: rows and events differ in length");
        goto done;
    }
    src_list = PyList_New(n);
    dst_list = PyList_New(n);
    if (src_list == NULL || dst_list == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        struct mld_flow_event ev;
        __u8 *row = (__u8 *)rows.buf + i * itemsize;
        const struct mld_flow_state *st = &ev.state;
        int lo_src, icmp;
        const __u8 *src, *dst;
        PyObject *a, *b;

        memcpy(&ev, (const char *)PyArray_DATA(in) + i * (npy_intp)sizeof(ev), sizeof(ev));
        ev.key.pad = 0;
        lo_src = (st->flags & MLD_F_INITIATOR_LO) != 0;
        icmp = ev.key.protocol == MLD_PROTO_ICMP || ev.key.protocol == MLD_PROTO_ICMPV6;
        src = lo_src ? ev.key.addr_lo : ev.key.addr_hi;
        dst = lo_src ? ev.key.addr_hi : ev.key.addr_lo;
        put_uint(row + off[PF_FLOW_ID], 8, flow_id(&ev));
        put_uint(row + off[PF_FIRST_TS], 8, st->first_ts_ns);
        put_uint(row + off[PF_LAST_TS], 8, st->last_ts_ns);
        put_uint(row + off[PF_SRC_PORT], 4,
                 icmp ? st->icmp_type : lo_src ? ev.key.port_lo : ev.key.port_hi);
        put_uint(row + off[PF_DST_PORT], 4,
                 icmp ? st->icmp_code : lo_src ? ev.key.port_hi : ev.key.port_lo);
        put_uint(row + off[PF_PROTOCOL], 4, ev.key.protocol);
        put_uint(row + off[PF_END_REASON], 4, st->end_reason);
        put_uint(row + off[PF_VLAN_ID], 4, st->vlan_id);
        put_uint(row + off[PF_FRAG], 4, st->frag_count);
        put_uint(row + off[PF_TINY_FRAG], 4, st->tiny_frag_count);
        put_uint(row + off[PF_OVERLAP_FRAG], 4, st->overlap_frag_count);
        put_uint(row + off[PF_IP_VERSION], 1, ev.key.ip_version);
        put_uint(row + off[PF_FLAGS], 1,
                 ((st->flags & MLD_F_HS_VERIFIED) ? PACK_FLAG_HS_VERIFIED : 0) |
                     ((st->flags & MLD_F_INTERIM) ? PACK_FLAG_INTERIM : 0));
        /* IPv4 keys are IPv4-mapped: the row holds the 4 bytes first, then zeros. */
        memset(row + off[PF_SRC_ADDR], 0, 16);
        memset(row + off[PF_DST_ADDR], 0, 16);
        memcpy(row + off[PF_SRC_ADDR], ev.key.ip_version == 4 ? src + 12 : src,
               ev.key.ip_version == 4 ? 4 : 16);
        memcpy(row + off[PF_DST_ADDR], ev.key.ip_version == 4 ? dst + 12 : dst,
               ev.key.ip_version == 4 ? 4 : 16);
        pack_direction(row, off + PF_DIR0, &st->dir[0]);
        pack_direction(row, off + PF_DIR0 + N_DIR_FIELDS, &st->dir[1]);
        a = address_bytes(src, ev.key.ip_version);
        b = address_bytes(dst, ev.key.ip_version);
        if (a == NULL || b == NULL) {
            Py_XDECREF(a);
            Py_XDECREF(b);
            goto done;
        }
        PyList_SET_ITEM(src_list, i, a);
        PyList_SET_ITEM(dst_list, i, b);
    }
    out = PyTuple_Pack(2, src_list, dst_list);
done:
    Py_XDECREF(src_list);
    Py_XDECREF(dst_list);
    Py_XDECREF(in);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&offs);
    return out;
}

/* ---- Engine --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct mld_engine eng;
    int ready;
    int busy;     /* a read runs without the GIL */
    int deferred; /* end status held back while a last batch still waits */
    PyArray_Descr *dtype;
} EngineObject;

static int engine_init(EngineObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"idle_timeout_ns", "active_timeout_ns", "max_flows", "batch_size",
                            "dtype", "interim_ns", NULL};
    unsigned long long idle, active, interim = 0;
    Py_ssize_t max_flows, batch;
    PyObject *dtype;
    struct mld_flow_config cfg;

    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKnnO!|K", names, &idle, &active, &max_flows,
                                     &batch, &PyArrayDescr_Type, &dtype, &interim))
        return -1;
    if (idle == 0 || active == 0 || active > MLD_MAX_ACTIVE_TIMEOUT_NS) {
        PyErr_SetString(PyExc_ValueError,
                        "timeouts must be > 0 and the active timeout at most 3600 s");
        return -1;
    }
    if (max_flows < 1 || max_flows > (1 << 30) || batch < 1 || batch > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError,
                        "max_flows must be in [1, 2**30] and batch_size in [1, 2**24]");
        return -1;
    }
    if (PyDataType_ELSIZE((PyArray_Descr *)dtype) != (npy_intp)sizeof(struct mld_flow_event)) {
        PyErr_SetString(PyExc_ValueError, "dtype itemsize differs from struct mld_flow_event");
        return -1;
    }
    cfg.idle_timeout_ns = idle;
    cfg.active_timeout_ns = active;
    cfg.interim_ns = interim; /* 0: no interim records */
    if (mld_engine_init(&self->eng, &cfg, (__u32)max_flows, (size_t)batch) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(dtype);
    self->dtype = (PyArray_Descr *)dtype;
    self->ready = 1;
    return 0;
}

static void engine_dealloc(EngineObject *self)
{
    if (self->ready)
        mld_engine_free(&self->eng);
    Py_XDECREF(self->dtype);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_usable(EngineObject *self)
{
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not initialised");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is reading in another thread");
        return -1;
    }
    return 0;
}

/* Move the first n waiting events into a new array. */
static PyObject *take(EngineObject *self, size_t n)
{
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *arr;

    Py_INCREF(self->dtype);
    arr = PyArray_NewFromDescr(&PyArray_Type, self->dtype, 1, dims, NULL, NULL, 0, NULL);
    if (arr == NULL)
        return NULL;
    if (n > 0)
        memcpy(PyArray_DATA((PyArrayObject *)arr), self->eng.out, n * sizeof(*self->eng.out));
    mld_engine_consume(&self->eng, n);
    return arr;
}

static PyObject *engine_open(EngineObject *self, PyObject *arg)
{
    PyObject *bytes;
    int rc;

    if (check_usable(self) != 0)
        return NULL;
    if (self->eng.pcap != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "another file is still being fed: finish or close its iterator first");
        return NULL;
    }
    if (!PyUnicode_FSConverter(arg, &bytes))
        return NULL;
    self->deferred = 0;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = mld_engine_open(&self->eng, PyBytes_AS_STRING(bytes));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(bytes);
    if (rc == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(is)", rc == -2 ? 2 : 1, self->eng.error);
}

static PyObject *engine_read(EngineObject *self, PyObject *unused)
{
    int status;
    size_t n;
    PyObject *arr;

    (void)unused;
    if (check_usable(self) != 0)
        return NULL;
    if (self->deferred) {
        status = self->deferred;
        self->deferred = 0;
    } else {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        status = mld_engine_read(&self->eng);
        if (status != MLD_READ_FULL)
            mld_engine_close(&self->eng);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    if (status == MLD_READ_NOMEM)
        return PyErr_NoMemory();
    n = self->eng.out_n < self->eng.batch_size ? self->eng.out_n : self->eng.batch_size;
    if (status != MLD_READ_FULL && self->eng.out_n > n) {
        /* More than one batch left at the end: hand out this one, the status next time. */
        self->deferred = status;
        status = MLD_READ_FULL;
    }
    arr = take(self, n);
    if (arr == NULL)
        return NULL;
    return Py_BuildValue("(Nis)", arr, status, status == MLD_READ_ERROR ? self->eng.error : "");
}

static PyObject *engine_close(EngineObject *self, PyObject *unused)
{
    (void)unused;
    if (check_usable(self) != 0)
        return NULL;
    if (mld_engine_close(&self->eng) != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *engine_finish(EngineObject *self, PyObject *unused)
{
    PyObject *arr;
    int rc;

    (void)unused;
    if (check_usable(self) != 0)
        return NULL;
    self->deferred = 0;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = mld_engine_finish(&self->eng);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (rc != 0)
        return PyErr_NoMemory();
    arr = take(self, self->eng.out_n);
    /* Give back what finishing a large table borrowed. */
    if (arr != NULL && self->eng.out_cap > self->eng.batch_size + 2) {
        struct mld_flow_event *o = realloc(self->eng.out, (self->eng.batch_size + 2) *
                                                              sizeof(*self->eng.out));
        if (o != NULL) {
            self->eng.out = o;
            self->eng.out_cap = self->eng.batch_size + 2;
        }
    }
    return arr;
}

static PyObject *engine_stats(EngineObject *self, PyObject *unused)
{
    const struct mld_engine_stats *s = &self->eng.stats;

    (void)unused;
    if (check_usable(self) != 0)
        return NULL;
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}", "packets", s->packets, "bytes", s->bytes,
        "ip_packets", s->ip_packets, "parse_errors", s->parse_errors, "non_ip", s->non_ip,
        "flows_created", s->flows_created, "flows_exported", s->flows_exported,
        "flows_evicted", s->flows_evicted, "live_flows", (unsigned long long)self->eng.table.live,
        "files", s->files, "parse_truncated", s->parse_truncated, "parse_malformed",
        s->parse_malformed, "parse_bad_length", s->parse_bad_length, "parse_ext_limit",
        s->parse_ext_limit, "fragments", s->fragments, "tiny_fragments", s->tiny_fragments,
        "table_lookups", (unsigned long long)self->eng.table.lookups, "table_probes",
        (unsigned long long)self->eng.table.probes, "interim_exported", s->interim_exported);
}

static PyMethodDef engine_methods[] = {
    {"open", (PyCFunction)engine_open, METH_O,
     "open(path) -> None | (kind, message): kind 1 cannot open, 2 unsupported link type"},
    {"read", (PyCFunction)engine_read, METH_NOARGS,
     "read() -> (events, status, message): status 0 more, 1 end of file, 2 error"},
    {"close", (PyCFunction)engine_close, METH_NOARGS, "apply a pending packet, close the file"},
    {"finish", (PyCFunction)engine_finish, METH_NOARGS,
     "export every live flow (CAPTURE_END) with any events still waiting"},
    {"stats", (PyCFunction)engine_stats, METH_NOARGS, "counters as a dict"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._flowengine.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Flow table fed from capture files (see native/__init__.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
};

static PyMethodDef module_methods[] = {
    {"structs", mld_py_structs, METH_NOARGS,
     "structs() -> {name: (size, [(member, offset, elem_size, count, c_type), ...])}"},
    {"constants", mld_py_constants, METH_NOARGS, "constants() -> {name: value} of flow_types.h"},
    {"supported_linktypes", py_supported_linktypes, METH_NOARGS, "pcap link type names"},
    {"flow_ids", py_flow_ids, METH_O, "FNV-1a 64 of key bytes + first_ts_ns per event"},
    {"json_floats", mld_py_json_floats, METH_VARARGS,
     "json_floats(values, ndigits) -> [json.dumps(round(v, ndigits)) for v in values]"},
    {"pack_addresses", mld_py_pack_addresses, METH_VARARGS,
     "pack_addresses(addrs, out): (n, 17) rows of length + 16 bytes"},
    {"json_lines", mld_py_json_lines, METH_VARARGS,
     "json_lines(n, parts[, fd]) -> bytes: n lines made of constant parts and columns (or "
     "written to fd: the number of bytes written)"},
    {"json_addresses", mld_py_json_addresses, METH_O,
     "json_addresses(keys) -> JSON strings of the addresses of (n, 17) length+bytes rows"},
    {"rows_to_protobuf", mld_py_rows_to_protobuf, METH_VARARGS,
     "rows_to_protobuf(rows, itemsize, ops, strings) -> one serialized message per row"},
    {"rows_to_matrix", mld_py_rows_to_matrix, METH_VARARGS,
     "rows_to_matrix(rows, itemsize, ops, out): float32 columns of fixed-layout rows"},
    {"packed_fields", py_packed_fields, METH_NOARGS,
     "packed_fields() -> [(column, kind, width)] that events_to_rows writes"},
    {"events_to_rows", py_events_to_rows, METH_VARARGS,
     "events_to_rows(events, rows, itemsize, offsets) -> (src_addrs, dst_addrs)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_flowengine", "ML Defender offline flow engine (xdp/flow.h).", -1,
    module_methods,        NULL,          NULL,                                             NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__flowengine(void)
{
    PyObject *m;

    import_array();
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&MldWindowsType) < 0 ||
        PyType_Ready(&MldRuleWindowsType) < 0)
        return NULL;
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddObjectRef(m, "Windows", (PyObject *)&MldWindowsType) < 0 ||
        PyModule_AddObjectRef(m, "RuleWindows", (PyObject *)&MldRuleWindowsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
