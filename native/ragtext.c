/* native/ragtext.c — the RAG store's per-event text and record work over a whole batch
 * (rag/describe.py, rag/indexed_store.py call it; it knows nothing of them).
 *
 * text_codes(texts, dim) -> (bytes, [end, ...])
 *     The hashed tokens of each text as rag/describe.py's ``_flat_codes`` gives them: the
 *     text lower-cased, its words found as the regex
 *     ``[a-z0-9][a-z0-9_.:-]*[a-z0-9]|[a-z0-9]`` finds them (left to right, a word ends
 *     at the last letter or digit of a run of word characters), each word's code, then
 *     each pair of adjacent words' ("a b") code; a code is 2 * (crc32 % dim), +1 when
 *     bit 16 of the crc32 is 0. The codes as uint16 bytes, one text after the other, and
 *     where each text's codes end (in codes). ASCII texts only (a ValueError otherwise:
 *     the caller takes the Python path, where str.lower() of other characters may give
 *     ASCII letters).
 *
 * record_rows(blobs, field, ops, rows, itemsize) -> None
 *     Decodes the sub-message ``field`` of each serialized message of ``blobs`` (a
 *     ScoredEvent's record, field 2) into one fixed-size row of ``rows`` (zeroed by the
 *     caller), following the program rows_to_protobuf (protowire.c) encodes the same rows
 *     with (proto/flowpack.py ENCODE_OPS: kind, field, offset, a, b): varints of width a,
 *     float32s, flag bits, addresses (up to 16 bytes), sub-messages (their flag bit set
 *     when present). Strings are not decoded (their index stays 0) and unknown fields are
 *     skipped. A message that is not valid wire format, or a field whose wire type is not
 *     the program's, raises ValueError. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- text_codes --------------------------------------------------------------------- */

static int is_alnum(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_word(uint8_t c)
{
    return is_alnum(c) || c == '_' || c == '.' || c == ':' || c == '-';
}

typedef struct {
    uint16_t *codes;
    size_t n, cap;
} Codes;

static int codes_push(Codes *c, uint16_t v)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 4096;
        uint16_t *p = realloc(c->codes, cap * sizeof *p);
        if (p == NULL)
            return -1;
        c->codes = p;
        c->cap = cap;
    }
    c->codes[c->n++] = v;
    return 0;
}

static uint16_t code_of(uLong h, unsigned dim)
{
    return (uint16_t)((h % dim) * 2 + (((h >> 16) & 1) ^ 1));
}

static PyObject *py_text_codes(PyObject *mod, PyObject *args)
{
    PyObject *texts, *ends = NULL, *out = NULL;
    unsigned dim;
    Codes c = {NULL, 0, 0};
    uint8_t *low = NULL;
    size_t low_cap = 0;
    size_t *starts = NULL, *lens = NULL, tok_cap = 0;
    (void)mod;

    if (!PyArg_ParseTuple(args, "O!I", &PyList_Type, &texts, &dim))
        return NULL;
    if (dim == 0 || dim > 32768) {
        PyErr_SetString(PyExc_ValueError, "text_codes: dim must be 1..32768");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(texts);
    ends = PyList_New(n);
    if (ends == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(texts, i);
        if (!PyUnicode_Check(t) || !PyUnicode_IS_ASCII(t)) {
            PyErr_Format(PyExc_ValueError, "text_codes: text %zd is not an ASCII str", i);
            goto fail;
        }
        size_t len = (size_t)PyUnicode_GET_LENGTH(t);
        const uint8_t *s = PyUnicode_1BYTE_DATA(t);
        if (len + 1 > low_cap) {
            free(low);
            low_cap = 2 * len + 64;
            low = malloc(low_cap);
            if (low == NULL)
                goto nomem;
        }
        for (size_t k = 0; k < len; k++)
            low[k] = (s[k] >= 'A' && s[k] <= 'Z') ? (uint8_t)(s[k] + 32) : s[k];
        /* The words: at most one per two characters, plus one. */
        if (len / 2 + 1 > tok_cap) {
            free(starts);
            free(lens);
            tok_cap = len / 2 + 64;
            starts = malloc(tok_cap * sizeof *starts);
            lens = malloc(tok_cap * sizeof *lens);
            if (starts == NULL || lens == NULL)
                goto nomem;
        }
        size_t nw = 0;
        for (size_t k = 0; k < len;) {
            if (!is_alnum(low[k])) {
                k++;
                continue;
            }
            size_t last = k;
            for (size_t j = k + 1; j < len && is_word(low[j]); j++)
                if (is_alnum(low[j]))
                    last = j;
            starts[nw] = k;
            lens[nw++] = last - k + 1;
            k = last + 1;
        }
        for (size_t w = 0; w < nw; w++) {
            uLong h = crc32(0L, low + starts[w], (uInt)lens[w]);
            if (codes_push(&c, code_of(h, dim)) < 0)
                goto nomem;
        }
        for (size_t w = 0; w + 1 < nw; w++) {
            uLong h = crc32(0L, low + starts[w], (uInt)lens[w]);
            h = crc32(h, (const Bytef *)" ", 1);
            h = crc32(h, low + starts[w + 1], (uInt)lens[w + 1]);
            if (codes_push(&c, code_of(h, dim)) < 0)
                goto nomem;
        }
        PyObject *e = PyLong_FromSize_t(c.n);
        if (e == NULL)
            goto fail;
        PyList_SET_ITEM(ends, i, e);
    }
    {
        PyObject *b = PyBytes_FromStringAndSize((const char *)c.codes,
                                                (Py_ssize_t)(c.n * sizeof(uint16_t)));
        if (b == NULL)
            goto fail;
        out = PyTuple_Pack(2, b, ends);
        Py_DECREF(b);
    }
    goto done;
nomem:
    PyErr_NoMemory();
fail:
    out = NULL;
done:
    Py_XDECREF(ends);
    free(c.codes);
    free(low);
    free(starts);
    free(lens);
    return out;
}

/* ---- record_rows -------------------------------------------------------------------- */

enum { OP_VARINT = 1, OP_FLOAT = 2, OP_FLAG = 3, OP_ADDR = 4, OP_STRING = 5, OP_BEGIN = 6,
       OP_END = 7 };

#define MAX_LEVELS 16
#define MAX_FIELD 128 /* field numbers of a level looked up in a table; above, a scan */
#define MAX_DEPTH 8

typedef struct {
    const int32_t *prog;
    Py_ssize_t nops;
    int16_t table[MAX_LEVELS][MAX_FIELD]; /* op index + 1 by field number, 0: none */
    int32_t level_of[512];                /* a BEGIN op's level, by op index */
    int32_t first[MAX_LEVELS];            /* a level's first op, and one past its last */
    int32_t last[MAX_LEVELS];
} Program;

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        out |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *v = out;
            return 0;
        }
    }
    return -1;
}

static int skip_field(const uint8_t **p, const uint8_t *end, int wire)
{
    uint64_t v;
    switch (wire) {
    case 0:
        return read_varint(p, end, &v);
    case 1:
        if (end - *p < 8)
            return -1;
        *p += 8;
        return 0;
    case 2:
        if (read_varint(p, end, &v) < 0 || v > (uint64_t)(end - *p))
            return -1;
        *p += v;
        return 0;
    case 5:
        if (end - *p < 4)
            return -1;
        *p += 4;
        return 0;
    }
    return -1;
}

/* The op of ``field`` at ``level`` (its index), or -1. */
static Py_ssize_t find_op(const Program *pg, int level, uint64_t field)
{
    if (field < MAX_FIELD)
        return pg->table[level][field] - 1;
    for (Py_ssize_t k = pg->first[level]; k < pg->last[level]; k++) {
        const int32_t *op = pg->prog + 5 * k;
        if ((uint64_t)(uint32_t)op[1] == field && op[0] != OP_END)
            return k;
        if (op[0] == OP_BEGIN) { /* skip the sub-message's ops */
            int depth = 1;
            while (depth && ++k < pg->last[level])
                depth += pg->prog[5 * k] == OP_BEGIN ? 1 : pg->prog[5 * k] == OP_END ? -1 : 0;
        }
    }
    return -1;
}

static int decode(const Program *pg, int level, const uint8_t *p, const uint8_t *end,
                  uint8_t *row, int depth)
{
    while (p < end) {
        uint64_t tag, v;
        if (read_varint(&p, end, &tag) < 0)
            return -1;
        int wire = (int)(tag & 7);
        Py_ssize_t k = find_op(pg, level, tag >> 3);
        if (k < 0) {
            if (skip_field(&p, end, wire) < 0)
                return -1;
            continue;
        }
        const int32_t *op = pg->prog + 5 * k;
        uint8_t *at = row + op[2];
        switch (op[0]) {
        case OP_VARINT:
            /* A value wider than its column (a negative enum) is not what the row holds:
             * the caller decodes those messages another way. */
            if (wire != 0 || read_varint(&p, end, &v) < 0 ||
                (op[3] < 8 && (v >> (8 * op[3])) != 0))
                return -1;
            memcpy(at, &v, (size_t)op[3]); /* little-endian host: the low bytes */
            break;
        case OP_FLOAT:
            if (wire != 5 || end - p < 4)
                return -1;
            memcpy(at, p, 4);
            p += 4;
            break;
        case OP_FLAG:
            if (wire != 0 || read_varint(&p, end, &v) < 0)
                return -1;
            if (v)
                *at |= (uint8_t)op[3];
            else
                *at &= (uint8_t)~op[3];
            break;
        case OP_ADDR:
            if (wire != 2 || read_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return -1;
            memset(at, 0, 16);
            memcpy(at, p, v < 16 ? (size_t)v : 16);
            p += v;
            break;
        case OP_STRING:
            if (wire != 2 || skip_field(&p, end, wire) < 0)
                return -1;
            break;
        case OP_BEGIN:
            if (wire != 2 || read_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p) ||
                depth + 1 >= MAX_DEPTH)
                return -1;
            if (op[3] >= 0)
                row[op[3]] |= (uint8_t)op[4];
            if (decode(pg, pg->level_of[k], p, p + v, row, depth + 1) < 0)
                return -1;
            p += v;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* Levels of the program: the top one, then one per BEGIN; checks every op reads inside a
 * row of ``itemsize`` bytes. */
static int make_program(Program *pg, const int32_t *prog, Py_ssize_t nops, Py_ssize_t itemsize)
{
    int stack[MAX_DEPTH], depth = 0, levels = 1;
    memset(pg, 0, sizeof *pg);
    pg->prog = prog;
    pg->nops = nops;
    if (nops > 512)
        return -1;
    pg->first[0] = 0;
    pg->last[0] = (int32_t)nops;
    stack[0] = 0;
    for (Py_ssize_t k = 0; k < nops; k++) {
        const int32_t *op = prog + 5 * k;
        int level = stack[depth];
        Py_ssize_t width = op[0] == OP_ADDR ? 16 : op[0] == OP_VARINT ? op[3] : op[0] == OP_FLOAT ? 4
                           : op[0] == OP_STRING ? 2 : 1;
        if (op[0] < OP_VARINT || op[0] > OP_END || op[1] <= 0 || op[2] < 0 ||
            op[2] + width > itemsize ||
            (op[0] == OP_VARINT && op[3] != 1 && op[3] != 2 && op[3] != 4 && op[3] != 8) ||
            (op[0] == OP_BEGIN && op[3] >= itemsize))
            return -1;
        if (op[0] != OP_END && op[1] < MAX_FIELD)
            pg->table[level][op[1]] = (int16_t)(k + 1);
        if (op[0] == OP_BEGIN) {
            if (levels == MAX_LEVELS || depth + 1 == MAX_DEPTH)
                return -1;
            pg->level_of[k] = levels;
            pg->first[levels] = (int32_t)k + 1;
            stack[++depth] = levels++;
        } else if (op[0] == OP_END) {
            if (depth == 0)
                return -1;
            pg->last[stack[depth--]] = (int32_t)k;
        }
    }
    return depth == 0 ? 0 : -1;
}

static PyObject *py_record_rows(PyObject *mod, PyObject *args)
{
    PyObject *blobs;
    unsigned field;
    Py_buffer ops, rows;
    Py_ssize_t itemsize;
    PyObject *out = NULL;
    Program *pg = NULL;
    (void)mod;

    if (!PyArg_ParseTuple(args, "O!Iy*w*n", &PyList_Type, &blobs, &field, &ops, &rows, &itemsize))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(blobs);
    if (itemsize <= 0 || rows.len != n * itemsize || ops.len % (5 * sizeof(int32_t)) != 0) {
        PyErr_SetString(PyExc_ValueError, "record_rows: rows or ops of a wrong size");
        goto done;
    }
    pg = malloc(sizeof *pg);
    if (pg == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (make_program(pg, (const int32_t *)ops.buf, ops.len / (Py_ssize_t)(5 * sizeof(int32_t)),
                     itemsize) < 0) {
        PyErr_SetString(PyExc_ValueError, "record_rows: the program does not fit the rows");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(blobs, i);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "record_rows: blobs must be bytes");
            goto done;
        }
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(b);
        const uint8_t *end = p + PyBytes_GET_SIZE(b);
        uint8_t *row = (uint8_t *)rows.buf + i * itemsize;
        while (p < end) {
            uint64_t tag, len;
            if (read_varint(&p, end, &tag) < 0)
                goto bad;
            if ((tag >> 3) != field || (tag & 7) != 2) {
                if (skip_field(&p, end, (int)(tag & 7)) < 0)
                    goto bad;
                continue;
            }
            if (read_varint(&p, end, &len) < 0 || len > (uint64_t)(end - p) ||
                decode(pg, 0, p, p + len, row, 0) < 0)
                goto bad;
            p += len;
        }
        continue;
    bad:
        PyErr_Format(PyExc_ValueError, "record_rows: message %zd is not what the program reads",
                     i);
        goto done;
    }
    out = Py_None;
    Py_INCREF(out);
done:
    free(pg);
    PyBuffer_Release(&ops);
    PyBuffer_Release(&rows);
    return out;
}

static PyMethodDef methods[] = {
    {"text_codes", py_text_codes, METH_VARARGS,
     "text_codes(texts, dim) -> (uint16 code bytes, [end, ...]) of ASCII texts"},
    {"record_rows", py_record_rows, METH_VARARGS,
     "record_rows(blobs, field, ops, rows, itemsize): decode a sub-message into rows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ragtext",
                                    "The RAG store's batch text and record work", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ragtext(void)
{
    return PyModule_Create(&module);
}
