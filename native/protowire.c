/* native/protowire.c — protobuf serialization of fixed-layout rows, driven by a program,
 * and the detector's float32 feature matrix from the same rows (rows_to_matrix, below).
 *
 * rows_to_protobuf(rows, itemsize, ops, strings) -> [bytes]: one serialized message per row
 * of a contiguous buffer of fixed-size rows. What each row holds, and under which field
 * number, is not known here: ``ops`` (int32, 5 per op: kind, field, offset, a, b) is built
 * in Python from the row dtype and the message descriptor (proto/flowpack.py,
 * ENCODE_OPS), so the layout has one definition. Proto3 rules: a zero scalar, a +0.0
 * float and an empty string are left out; a sub-message between BEGIN and END is written
 * whenever its condition holds, empty or not. */
#include "protowire.h"

#include <stdint.h>
#include <string.h>

enum {
    OP_VARINT = 1,   /* unsigned little-endian integer of width a (1, 2, 4, 8) at offset */
    OP_FLOAT = 2,    /* float32 at offset, fixed32 on the wire */
    OP_FLAG = 3,     /* bool: (byte at offset) & a */
    OP_ADDR = 4,     /* 16 bytes at offset; 4 of them when the byte at a is 4 */
    OP_STRING = 5,   /* uint16 index at offset into strings */
    OP_BEGIN = 6,    /* sub-message; written when a < 0 or (byte at a) & b */
    OP_END = 7,
};

#define MAX_RECORD 4096
#define MAX_DEPTH 8

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v > 0x7F) {
        p[n++] = (uint8_t)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static uint64_t get_uint(const uint8_t *p, int width)
{
    uint64_t v = 0;
    memcpy(&v, p, (size_t)width); /* little-endian host (x86_64, aarch64) */
    return v;
}

PyObject *mld_py_rows_to_protobuf(PyObject *mod, PyObject *args)
{
    Py_buffer rows, ops;
    Py_ssize_t itemsize;
    PyObject *strings, *out = NULL;
    uint8_t buf[MAX_RECORD];
    (void)mod;

    if (!PyArg_ParseTuple(args, "y*ny*O!", &rows, &itemsize, &ops, &PyList_Type, &strings))
        return NULL;
    Py_ssize_t nops = ops.len / (Py_ssize_t)(5 * sizeof(int32_t));
    const int32_t *prog = (const int32_t *)ops.buf;
    Py_ssize_t nstr = PyList_GET_SIZE(strings);
    if (itemsize <= 0 || rows.len % itemsize != 0 || ops.len % (5 * sizeof(int32_t)) != 0) {
        PyErr_SetString(PyExc_ValueError, "rows_to_protobuf: rows or ops of a wrong size");
        goto done;
    }
    for (Py_ssize_t k = 0; k < nops; k++) { /* every op reads inside a row */
        const int32_t *op = prog + 5 * k;
        int32_t end = op[2] + (op[0] == OP_ADDR ? 16 : op[0] == OP_VARINT ? op[3] : 4);
        if (op[0] < OP_VARINT || op[0] > OP_END || op[2] < 0 || end > itemsize ||
            ((op[0] == OP_ADDR || (op[0] == OP_BEGIN && op[3] >= 0)) && op[3] >= itemsize) ||
            (op[0] == OP_VARINT && op[3] != 1 && op[3] != 2 && op[3] != 4 && op[3] != 8)) {
            PyErr_Format(PyExc_ValueError, "rows_to_protobuf: op %zd is out of the row", k);
            goto done;
        }
    }
    for (Py_ssize_t s = 0; s < nstr; s++) {
        if (!PyBytes_Check(PyList_GET_ITEM(strings, s))) {
            PyErr_SetString(PyExc_TypeError, "rows_to_protobuf: strings must be bytes");
            goto done;
        }
    }
    Py_ssize_t n = rows.len / itemsize;
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *row = (const uint8_t *)rows.buf + i * itemsize;
        size_t pos = 0, start[MAX_DEPTH];
        int32_t field_of[MAX_DEPTH];
        int depth = 0;
        for (Py_ssize_t k = 0; k < nops; k++) {
            const int32_t *op = prog + 5 * k;
            const uint8_t *at = row + op[2];
            uint32_t field = (uint32_t)op[1];
            if (pos + 64 > MAX_RECORD) {
                PyErr_SetString(PyExc_ValueError, "rows_to_protobuf: record too long");
                goto fail;
            }
            switch (op[0]) {
            case OP_VARINT: {
                uint64_t v = get_uint(at, op[3]);
                if (v) {
                    pos += put_varint(buf + pos, (uint64_t)field << 3);
                    pos += put_varint(buf + pos, v);
                }
                break;
            }
            case OP_FLOAT: {
                uint32_t bits;
                memcpy(&bits, at, 4);
                if (bits) {
                    pos += put_varint(buf + pos, ((uint64_t)field << 3) | 5);
                    memcpy(buf + pos, &bits, 4);
                    pos += 4;
                }
                break;
            }
            case OP_FLAG:
                if (*at & (uint8_t)op[3]) {
                    pos += put_varint(buf + pos, (uint64_t)field << 3);
                    buf[pos++] = 1;
                }
                break;
            case OP_ADDR: {
                size_t len = row[op[3]] == 4 ? 4 : 16;
                pos += put_varint(buf + pos, ((uint64_t)field << 3) | 2);
                buf[pos++] = (uint8_t)len;
                memcpy(buf + pos, at, len);
                pos += len;
                break;
            }
            case OP_STRING: {
                uint16_t idx;
                memcpy(&idx, at, 2);
                if (idx >= nstr) {
                    PyErr_Format(PyExc_ValueError, "rows_to_protobuf: row %zd names string %u",
                                 i, idx);
                    goto fail;
                }
                PyObject *s = PyList_GET_ITEM(strings, idx);
                Py_ssize_t len = PyBytes_GET_SIZE(s);
                if (len) {
                    if (pos + 16 + (size_t)len > MAX_RECORD) {
                        PyErr_SetString(PyExc_ValueError, "rows_to_protobuf: string too long");
                        goto fail;
                    }
                    pos += put_varint(buf + pos, ((uint64_t)field << 3) | 2);
                    pos += put_varint(buf + pos, (uint64_t)len);
                    memcpy(buf + pos, PyBytes_AS_STRING(s), (size_t)len);
                    pos += (size_t)len;
                }
                break;
            }
            case OP_BEGIN:
                if (op[3] >= 0 && !(row[op[3]] & (uint8_t)op[4])) {
                    int skip = 1; /* leave the whole sub-message out */
                    while (skip && ++k < nops)
                        skip += prog[5 * k] == OP_BEGIN ? 1 : prog[5 * k] == OP_END ? -1 : 0;
                    break;
                }
                if (depth == MAX_DEPTH) {
                    PyErr_SetString(PyExc_ValueError, "rows_to_protobuf: nested too deep");
                    goto fail;
                }
                start[depth] = pos;
                field_of[depth++] = op[1];
                break;
            case OP_END: {
                if (depth == 0) {
                    PyErr_SetString(PyExc_ValueError, "rows_to_protobuf: END without BEGIN");
                    goto fail;
                }
                depth--;
                uint8_t head[16];
                size_t len = pos - start[depth];
                size_t hl = put_varint(head, ((uint64_t)(uint32_t)field_of[depth] << 3) | 2);
                hl += put_varint(head + hl, len);
                memmove(buf + start[depth] + hl, buf + start[depth], len);
                memcpy(buf + start[depth], head, hl);
                pos += hl;
                break;
            }
            }
        }
        PyObject *b = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)pos);
        if (b == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, b);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&rows);
    PyBuffer_Release(&ops);
    return out;
}

/* rows_to_matrix(rows, itemsize, ops, out): the float32 matrix out[n][nops] from a
 * contiguous buffer of fixed-size rows, one column per op. An op is 9 int32: kind, then
 * four (offset, type) column references, type 1/2/4/8 an unsigned little-endian integer of
 * that width, 5 a float32. Each column value is read as a double (as NumPy's astype(float64)
 * does), the op's expression is computed in double in the order of detector/features.py's
 * feature_matrix and the result rounded once to float32; detector/features.py builds the
 * ops from its feature list and the row dtype (the one definition of both), and its tests
 * check the bits against the NumPy path. */
enum {
    MX_COLUMN = 1,   /* c0 */
    MX_CAP = 2,      /* min(c0, c1's offset as a constant) */
    MX_DURATION = 3, /* (c1 > c0 ? c1 - c0 : 0) / 1e9, c0 first_ts_ns, c1 last_ts_ns (uint64) */
    MX_RATIO = 4,    /* c0 / (c1 + 1) */
    MX_RATE = 5,     /* (c0 + c1) / max(duration(c2, c3), 1e-3) */
};

static inline double mx_value(const uint8_t *row, int32_t offset, int32_t type)
{
    const uint8_t *p = row + offset;
    switch (type) { /* fixed-size copies: plain loads, no memcpy call */
    case 1:
        return (double)*p;
    case 2: {
        uint16_t v;
        memcpy(&v, p, 2);
        return (double)v;
    }
    case 4: {
        uint32_t v;
        memcpy(&v, p, 4);
        return (double)v;
    }
    case 8: {
        uint64_t v;
        memcpy(&v, p, 8);
        return (double)v;
    }
    default: {
        float f;
        memcpy(&f, p, 4);
        return (double)f;
    }
    }
}

static double mx_duration(const uint8_t *row, const int32_t *op)
{
    uint64_t first, last;
    memcpy(&first, row + op[0], 8);
    memcpy(&last, row + op[2], 8);
    return (double)(last > first ? last - first : 0) / 1e9;
}

__attribute__((optimize("fp-contract=off"))) PyObject *mld_py_rows_to_matrix(PyObject *mod,
                                                                            PyObject *args)
{
    Py_buffer rows, ops, out;
    Py_ssize_t itemsize;
    PyObject *ret = NULL;
    (void)mod;

    if (!PyArg_ParseTuple(args, "y*ny*w*", &rows, &itemsize, &ops, &out))
        return NULL;
    const int32_t *prog = (const int32_t *)ops.buf;
    Py_ssize_t nops = ops.len / (Py_ssize_t)(9 * sizeof(int32_t));
    if (itemsize <= 0 || rows.len % itemsize != 0 || ops.len % (9 * sizeof(int32_t)) != 0 ||
        out.len != (rows.len / itemsize) * nops * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "rows_to_matrix: rows, ops or out of a wrong size");
        goto done;
    }
    for (Py_ssize_t k = 0; k < nops; k++) { /* every reference reads inside a row */
        const int32_t *op = prog + 9 * k;
        int refs = op[0] == MX_COLUMN ? 1 : op[0] == MX_RATE ? 4 : 2;
        if (op[0] < MX_COLUMN || op[0] > MX_RATE)
            goto bad;
        for (int r = 0; r < refs; r++) {
            int32_t off = op[1 + 2 * r], type = op[2 + 2 * r];
            if (op[0] == MX_CAP && r == 1)
                continue; /* the constant */
            if ((op[0] == MX_DURATION || (op[0] == MX_RATE && r >= 2)) && type != 8)
                goto bad;
            if (type != 1 && type != 2 && type != 4 && type != 8 && type != 5)
                goto bad;
            if (off < 0 || off + (type == 5 ? 4 : type) > itemsize)
                goto bad;
        }
        continue;
    bad:
        PyErr_Format(PyExc_ValueError, "rows_to_matrix: op %zd is out of the row", k);
        goto done;
    }
    Py_ssize_t n = rows.len / itemsize;
    float *dst = (float *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *row = (const uint8_t *)rows.buf + i * itemsize;
        for (Py_ssize_t k = 0; k < nops; k++) {
            const int32_t *op = prog + 9 * k;
            double v = 0.0;
            switch (op[0]) {
            case MX_COLUMN:
                v = mx_value(row, op[1], op[2]);
                break;
            case MX_CAP: {
                double cap = (double)op[3];
                v = mx_value(row, op[1], op[2]);
                v = v < cap ? v : cap; /* np.minimum; a NaN cannot come from these columns */
                break;
            }
            case MX_DURATION:
                v = mx_duration(row, op + 1);
                break;
            case MX_RATIO:
                v = mx_value(row, op[1], op[2]) / (mx_value(row, op[3], op[4]) + 1.0);
                break;
            case MX_RATE: {
                double d = mx_duration(row, op + 5);
                v = (mx_value(row, op[1], op[2]) + mx_value(row, op[3], op[4])) /
                    (d > 1e-3 ? d : 1e-3);
                break;
            }
            }
            dst[i * nops + k] = (float)v;
        }
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&rows);
    PyBuffer_Release(&ops);
    PyBuffer_Release(&out);
    return ret;
}
