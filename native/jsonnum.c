/* native/jsonnum.c — JSON text of whole arrays (numbers, addresses), exactly as Python writes it.
 *
 * json_floats(values, ndigits) gives, for every float64 of a 1-D array, the text that
 * json.dumps(round(v, ndigits)) gives in Python: the value rounded to ndigits decimals
 * (correctly, ties to even on the exact binary value, as float.__round__), then the
 * shortest repr that reads back to that double (float.__repr__), "NaN"/"Infinity" for
 * non-finite values. The offline JSON writer (detector/jsonlines.py) formats whole columns
 * with it instead of calling round() and repr() once per value.
 *
 * Fast path: v is m * 2^e exactly, so k = v * 10^n rounded half to even is computed
 * exactly in 128-bit integers (the integer Python's round picks, ties included), and
 * k / 10^n (one correctly rounded division of two exact doubles) is the double it
 * returns. While |k| < 2^52 the decimals of k / 10^n lie further apart than the double's
 * ulp (at most |k| 10^-n 2^-52), so no other decimal of n places reads back to the same
 * double and the repr is k's digits with the point put back and trailing zeros dropped
 * ("1.0" keeps one). Everything else (huge values, values that Python prints with an
 * exponent) goes through CPython's own routines, the
 * same ones float.__round__ and float.__repr__ use: PyOS_double_to_string in 'f' mode is
 * the correctly rounded decimal, read back with PyOS_string_to_double, printed in 'r'
 * mode. tests/native/test_jsonnum.py checks both paths against round() and repr().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include "jsonnum.h"

#define MAX_DIGITS 8

static const double POW10[MAX_DIGITS + 1] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};

/* The exact slow path: round() then repr() with CPython's own conversions. */
static PyObject *exact_text(double v, int ndigits)
{
    char *fixed = PyOS_double_to_string(v, 'f', ndigits, 0, NULL);
    double rounded;
    char *repr;
    PyObject *out;

    if (fixed == NULL)
        return NULL;
    rounded = PyOS_string_to_double(fixed, NULL, NULL);
    PyMem_Free(fixed);
    if (rounded == -1.0 && PyErr_Occurred())
        return NULL;
    repr = PyOS_double_to_string(rounded, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (repr == NULL)
        return NULL;
    out = PyUnicode_FromString(repr);
    PyMem_Free(repr);
    return out;
}

/* round(v, ndigits) as an integer k of units 10^-ndigits, exactly: v = m * 2^e with m an
 * integer, so v * 10^n = m * 10^n / 2^-e, and the quotient is rounded half to even on the
 * exact remainder (what float.__round__ does on the exact binary value). 0 when the
 * value is out of the range this handles (|v| >= 2^52, or a quotient of 2^52 or more). */
static int exact_units(double v, int ndigits, int64_t *k)
{
    static const uint64_t P10[MAX_DIGITS + 1] = {1,      10,      100,      1000,     10000,
                                                 100000, 1000000, 10000000, 100000000};
    uint64_t bits, m;
    int biased, shift;
    unsigned __int128 num, q, r, half;

    memcpy(&bits, &v, sizeof(bits));
    biased = (int)((bits >> 52) & 0x7ff);
    if (biased == 0 || biased == 0x7ff)
        return 0; /* subnormal, infinite or NaN: the slow path */
    m = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
    shift = 1075 - biased; /* |v| = m / 2^shift */
    if (shift <= 0 || shift > 120)
        return 0;
    num = (unsigned __int128)m * P10[ndigits];
    q = num >> shift;
    r = num - (q << shift);
    half = (unsigned __int128)1 << (shift - 1);
    if (r > half || (r == half && (q & 1)))
        q++;
    if (q >= ((unsigned __int128)1 << 52))
        return 0;
    *k = v < 0 ? -(int64_t)q : (int64_t)q;
    return 1;
}

/* Fast path into buf; returns the length, or 0 when the slow path must decide. */
static int fast_text(double v, int ndigits, char *buf)
{
    int64_t k;
    uint64_t mag;
    char digits[24];
    int nd = 0, len = 0, point, last;

    if (!isfinite(v))
        return 0;
    if (v == 0.0 || !exact_units(v, ndigits, &k)) {
        if (v != 0.0)
            return 0;
        k = 0;
    }
    if (k == 0) {
        if (signbit(v)) {
            memcpy(buf, "-0.0", 4);
            return 4;
        }
        memcpy(buf, "0.0", 3);
        return 3;
    }
    mag = (uint64_t)(k < 0 ? -k : k);
    /* Python prints values below 1e-4 with an exponent: leave those to the slow path. */
    if (ndigits > 4 && (double)mag < POW10[ndigits - 4])
        return 0;
    while (mag) {
        digits[nd++] = (char)('0' + mag % 10);
        mag /= 10;
    }
    /* digits[] holds k's digits least significant first; the point goes ndigits in. */
    if (k < 0)
        buf[len++] = '-';
    point = ndigits;
    if (nd <= point) {
        buf[len++] = '0';
    } else {
        for (int i = nd - 1; i >= point; i--)
            buf[len++] = digits[i];
    }
    buf[len++] = '.';
    /* The fraction: ndigits digits (leading zeros where k is short), trailing zeros cut. */
    last = 0;
    while (last < point && (last >= nd ? '0' : digits[last]) == '0')
        last++;
    if (last == point) {
        buf[len++] = '0';
        return len;
    }
    for (int i = point - 1; i >= last; i--)
        buf[len++] = i >= nd ? '0' : digits[i];
    return len;
}

PyObject *mld_py_json_floats(PyObject *mod, PyObject *args)
{
    PyObject *obj, *out = NULL;
    Py_buffer view;
    int ndigits;
    Py_ssize_t n;
    const double *data;
    char buf[64];
    (void)mod;

    if (!PyArg_ParseTuple(args, "Oi", &obj, &ndigits))
        return NULL;
    if (ndigits < 0 || ndigits > MAX_DIGITS) {
        PyErr_Format(PyExc_ValueError, "json_floats: ndigits must be 0..%d, got %d", MAX_DIGITS,
                     ndigits);
        return NULL;
    }
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (view.ndim != 1 || view.itemsize != 8 || view.format == NULL ||
        strcmp(view.format, "d") != 0) {
        PyErr_SetString(PyExc_TypeError,
                        "json_floats: values must be a contiguous 1-D float64 array");
        goto fail;
    }
    n = view.shape[0];
    data = (const double *)view.buf;
    out = PyList_New(n);
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = data[i];
        PyObject *s;
        int len;

        if (isnan(v))
            s = PyUnicode_FromString("NaN");
        else if (isinf(v))
            s = PyUnicode_FromString(v > 0 ? "Infinity" : "-Infinity");
        else if ((len = fast_text(v, ndigits, buf)) > 0)
            s = PyUnicode_FromStringAndSize(buf, len);
        else
            s = exact_text(v, ndigits);
        if (s == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, s);
    }
    PyBuffer_Release(&view);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* A byte in decimal (no leading zeros) at buf; its length. */
static int u8_text(unsigned v, char *buf)
{
    int len = 0;
    if (v >= 100)
        buf[len++] = (char)('0' + v / 100);
    if (v >= 10)
        buf[len++] = (char)('0' + v / 10 % 10);
    buf[len++] = (char)('0' + v % 10);
    return len;
}

/* The dotted quad of an IPv4 address at buf; its length (what "%u.%u.%u.%u" writes). */
static int ipv4_text(const uint8_t *a, char *buf)
{
    int len = u8_text(a[0], buf);
    for (int i = 1; i < 4; i++) {
        buf[len++] = '.';
        len += u8_text(a[i], buf + len);
    }
    return len;
}

/* A hextet in lowercase hex without leading zeros (what "%x" writes); its length. */
static int hex_text(unsigned v, char *buf)
{
    static const char HEX[] = "0123456789abcdef";
    int len = 0, shift = 12;
    while (shift > 0 && ((v >> shift) & 0xf) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        buf[len++] = HEX[(v >> shift) & 0xf];
    return len;
}

/* The text of an IPv6 address as Python's ipaddress writes it (3.11): hextets in lowercase
 * hex without leading zeros, the longest run of two or more zero hextets (the first of
 * equal runs) written "::". */
static int ipv6_text(const uint8_t *a, char *buf)
{
    unsigned h[8];
    int best = -1, best_len = 0, run_start = -1, run_len = 0, len = 0;

    for (int i = 0; i < 8; i++) {
        h[i] = ((unsigned)a[2 * i] << 8) | a[2 * i + 1];
        if (h[i] == 0) {
            if (run_start < 0)
                run_start = i;
            run_len++;
            if (run_len > best_len) {
                best_len = run_len;
                best = run_start;
            }
        } else {
            run_start = -1;
            run_len = 0;
        }
    }
    if (best_len < 2)
        best = -1;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            buf[len++] = ':';
            if (i == 0)
                buf[len++] = ':';
            i += best_len - 1;
            continue;
        }
        len += hex_text(h[i], buf + len);
        if (i < 7)
            buf[len++] = ':';
    }
    return len;
}

PyObject *mld_py_json_addresses(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    PyObject *out = NULL;
    Py_ssize_t n;
    char buf[64];
    (void)mod;

    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (view.len % 17 != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "json_addresses: expected (n, 17) rows of length + 16 address bytes");
        goto fail;
    }
    n = view.len / 17;
    out = PyList_New(n);
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *row = (const uint8_t *)view.buf + i * 17;
        int len = 0;
        PyObject *s;

        buf[len++] = '"';
        if (row[0] == 4) {
            len += ipv4_text(row + 1, buf + len);
        } else if (row[0] == 16) {
            len += ipv6_text(row + 1, buf + len);
        } else {
            PyErr_Format(PyExc_ValueError, "json_addresses: row %zd: address of %u bytes", i,
                         row[0]);
            goto fail;
        }
        buf[len++] = '"';
        s = PyUnicode_FromStringAndSize(buf, len);
        if (s == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, s);
    }
    PyBuffer_Release(&view);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- whole lines ------------------------------------------------------------------------- */

static int mld_get_buffer_json(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize,
                               Py_ssize_t n, Py_ssize_t per_row, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len != n * per_row * itemsize) {
        PyErr_Format(PyExc_ValueError, "json_lines: %s has %zd bytes, expected %zd", what,
                     view->len, n * per_row * itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* json_lines runs without the GIL (the caller's other threads read and score the next batch
 * meanwhile): everything it reads from Python objects is taken before it lets the GIL go
 * (column buffers, the UTF-8 of every text), its buffer grows with the raw allocator, and
 * an error is kept here and raised once the GIL is back. Only the rare exact path of
 * text_float (values Python prints with an exponent, or huge ones) takes the GIL back for
 * CPython's own conversions. */
enum { E_NONE, E_VALUE, E_INDEX, E_NOMEM, E_PYTHON };

typedef struct {
    PyThreadState *ts; /* the saved thread state while the GIL is released, else NULL */
    int err;
    char msg[160];
} Ctx;

static int fail(Ctx *c, int kind, const char *msg)
{
    if (c->err == E_NONE) {
        c->err = kind;
        snprintf(c->msg, sizeof c->msg, "%s", msg);
    }
    return -1;
}

/* A growing byte buffer. */
typedef struct {
    char *buf;
    size_t len, cap;
} Text;

static int text_reserve(Ctx *c, Text *t, size_t more)
{
    size_t cap;
    char *bigger;
    if (t->len + more <= t->cap)
        return 0;
    cap = t->cap ? t->cap : 1 << 16;
    while (cap < t->len + more)
        cap *= 2;
    bigger = PyMem_RawRealloc(t->buf, cap);
    if (bigger == NULL)
        return fail(c, E_NOMEM, "");
    t->buf = bigger;
    t->cap = cap;
    return 0;
}

static int text_put(Ctx *c, Text *t, const char *s, size_t n)
{
    if (text_reserve(c, t, n) < 0)
        return -1;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    return 0;
}

/* json.dumps(round(v, ndigits)) appended to t. */
static int text_float(Ctx *c, Text *t, double v, int ndigits)
{
    char buf[64];
    int len, rc;
    PyObject *s;
    const char *utf8;
    Py_ssize_t n;

    if (isnan(v))
        return text_put(c, t, "NaN", 3);
    if (isinf(v))
        return v > 0 ? text_put(c, t, "Infinity", 8) : text_put(c, t, "-Infinity", 9);
    if ((len = fast_text(v, ndigits, buf)) > 0)
        return text_put(c, t, buf, (size_t)len);
    /* The exact path needs the GIL (CPython's allocator and conversions). */
    if (c->ts != NULL)
        PyEval_RestoreThread(c->ts);
    s = exact_text(v, ndigits);
    rc = -1;
    if (s != NULL) {
        utf8 = PyUnicode_AsUTF8AndSize(s, &n);
        if (utf8 != NULL && (size_t)n < sizeof buf) {
            memcpy(buf, utf8, (size_t)n);
            rc = (int)n;
        }
        Py_DECREF(s);
    }
    if (rc < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "json_lines: a float's text is too long");
    if (rc < 0)
        c->err = E_PYTHON; /* the exception stays set for the caller to raise */
    if (c->ts != NULL)
        c->ts = PyEval_SaveThread();
    if (rc < 0)
        return -1;
    return text_put(c, t, buf, (size_t)rc);
}

static int text_uint(Ctx *c, Text *t, uint64_t v, int negative)
{
    char digits[24];
    int nd = 0;
    if (text_reserve(c, t, 22) < 0)
        return -1;
    if (negative)
        t->buf[t->len++] = '-';
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (nd)
        t->buf[t->len++] = digits[--nd];
    return 0;
}

static int text_address(Ctx *c, Text *t, const uint8_t *row)
{
    char buf[64];
    int len = 0;
    buf[len++] = '"';
    if (row[0] == 4) {
        len += ipv4_text(row + 1, buf + len);
    } else if (row[0] == 16) {
        len += ipv6_text(row + 1, buf + len);
    } else {
        char msg[64];
        snprintf(msg, sizeof msg, "json_lines: address of %u bytes", row[0]);
        return fail(c, E_VALUE, msg);
    }
    buf[len++] = '"';
    return text_put(c, t, buf, (size_t)len);
}

/* The UTF-8 of each str of a list, taken with the GIL held (the list outlives the call). */
typedef struct {
    const char *s;
    Py_ssize_t n;
} Utf8;

static Utf8 *utf8_of(PyObject *list)
{
    Py_ssize_t m = PyList_GET_SIZE(list);
    Utf8 *out = PyMem_Malloc((size_t)(m ? m : 1) * sizeof(Utf8));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *s = PyList_GET_ITEM(list, i);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "json_lines: a text column holds a non-str");
            PyMem_Free(out);
            return NULL;
        }
        out[i].s = PyUnicode_AsUTF8AndSize(s, &out[i].n);
        if (out[i].s == NULL) {
            PyMem_Free(out);
            return NULL;
        }
    }
    return out;
}

/* One part of a line: constant text, or one field read from a column. */
enum { P_CONST, P_INT, P_UINT, P_FLOAT, P_ADDR, P_STR, P_TOP };

typedef struct {
    int kind, ndigits, ndigits2;
    Py_ssize_t k;      /* P_TOP: entries per row */
    PyObject *obj;     /* P_CONST: bytes; P_STR: list of str; P_TOP: list of names */
    Utf8 *text;        /* P_STR: the rows' texts; P_TOP: the names' */
    Py_ssize_t ntext;  /* entries of text */
    const char *bytes; /* P_CONST */
    size_t nbytes;
    Py_buffer b[3];    /* columns */
    int nbuf;
} Part;

static int part_buffer(Part *p, PyObject *obj, Py_ssize_t n, Py_ssize_t itemsize,
                       Py_ssize_t per_row, const char *what)
{
    if (mld_get_buffer_json(obj, &p->b[p->nbuf], itemsize, n, per_row, what) < 0)
        return -1;
    p->nbuf++;
    return 0;
}

/* The lines themselves, from the parts taken beforehand (no Python object is touched but
 * through text_float's exact path, which takes the GIL back). */
static int make_lines(Ctx *c, Text *t, Py_ssize_t n, Part *parts, Py_ssize_t nparts)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        for (Py_ssize_t j = 0; j < nparts; j++) {
            Part *p = &parts[j];
            int rc = 0;
            switch (p->kind) {
            case P_CONST:
                rc = text_put(c, t, p->bytes, p->nbytes);
                break;
            case P_INT: {
                int64_t v = ((const int64_t *)p->b[0].buf)[i];
                rc = text_uint(c, t, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, v < 0);
                break;
            }
            case P_UINT:
                rc = text_uint(c, t, ((const uint64_t *)p->b[0].buf)[i], 0);
                break;
            case P_FLOAT:
                rc = text_float(c, t, ((const double *)p->b[0].buf)[i], p->ndigits);
                break;
            case P_ADDR:
                rc = text_address(c, t, (const uint8_t *)p->b[0].buf + i * 17);
                break;
            case P_STR:
                rc = text_put(c, t, p->text[i].s, (size_t)p->text[i].n);
                break;
            case P_TOP: {
                const int64_t *idx = (const int64_t *)p->b[0].buf + i * p->k;
                const double *val = (const double *)p->b[1].buf + i * p->k;
                const double *wt = (const double *)p->b[2].buf + i * p->k;
                int first = 1;
                rc = text_put(c, t, "[", 1);
                for (Py_ssize_t e = 0; rc == 0 && e < p->k; e++) {
                    if (!(wt[e] > 0))
                        continue;
                    if (idx[e] < 0 || idx[e] >= p->ntext) {
                        rc = fail(c, E_INDEX, "json_lines: feature index");
                        break;
                    }
                    rc = text_put(c, t, first ? "{\"name\":" : ",{\"name\":", first ? 8 : 9);
                    first = 0;
                    if (rc == 0)
                        rc = text_put(c, t, p->text[idx[e]].s, (size_t)p->text[idx[e]].n);
                    if (rc == 0)
                        rc = text_put(c, t, ",\"value\":", 9);
                    if (rc == 0)
                        rc = text_float(c, t, val[e], p->ndigits);
                    if (rc == 0)
                        rc = text_put(c, t, ",\"weight\":", 10);
                    if (rc == 0)
                        rc = text_float(c, t, wt[e], p->ndigits2);
                    if (rc == 0)
                        rc = text_put(c, t, "}", 1);
                }
                if (rc == 0)
                    rc = text_put(c, t, "]", 1);
                break;
            }
            }
            if (rc < 0)
                return -1;
        }
        if (text_put(c, t, "\n", 1) < 0)
            return -1;
    }
    return 0;
}

/* json_lines(n, parts) -> bytes: n lines, each the concatenation of the parts for that row,
 * then "\n". A part is bytes (constant text) or a tuple:
 *   ("i", int64[n]) / ("u", uint64[n])      the integer
 *   ("f", float64[n], ndigits)              json.dumps(round(v, ndigits))
 *   ("a", uint8[n, 17])                     the address as a JSON string
 *   ("s", [str] * n)                        the text as given (already JSON)
 *   ("t", int64[n, k], float64[n, k], float64[n, k], [str], vdigits, wdigits)
 *        the explanation list: '{"name":NAMES[i],"value":v,"weight":w}' for each of the
 *        k entries whose weight is > 0, comma-separated, in brackets.
 * The lines are made with the GIL released (see Ctx above); the columns and lists must not
 * be changed by another thread during the call.
 *
 * json_lines(n, parts, fd) writes the lines to the file descriptor fd instead (all of them,
 * still without the GIL) and returns how many bytes it wrote: no bytes object is made, so
 * the text is not copied once more into fresh memory (a page fault per 4 KiB of it).
 * An error of write() is raised as OSError (BrokenPipeError for EPIPE).
 */
PyObject *mld_py_json_lines(PyObject *mod, PyObject *args)
{
    Py_ssize_t n, nparts;
    PyObject *list, *out = NULL;
    Part *parts = NULL;
    /* A text buffer is kept from one call to the next (a fresh one per batch cost a page
     * fault per 4 KiB of every batch's text). A call takes it with the GIL held and gives
     * it back at its end, so calls on two threads at once each have their own. */
    static Text kept = {NULL, 0, 0};
    Text t = kept;
    Ctx c = {NULL, E_NONE, ""};
    int rc, fd = -1, write_errno = 0;
    (void)mod;

    kept.buf = NULL;
    kept.len = kept.cap = 0;
    t.len = 0;

    if (!PyArg_ParseTuple(args, "nO!|i", &n, &PyList_Type, &list, &fd))
        goto done;
    nparts = PyList_GET_SIZE(list);
    parts = PyMem_Calloc((size_t)nparts + 1, sizeof(Part));
    if (parts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < nparts; j++) {
        PyObject *item = PyList_GET_ITEM(list, j);
        Part *p = &parts[j];
        const char *kind;
        if (PyBytes_Check(item)) {
            p->kind = P_CONST;
            p->obj = item;
            p->bytes = PyBytes_AS_STRING(item);
            p->nbytes = (size_t)PyBytes_GET_SIZE(item);
            continue;
        }
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) ||
            (kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(item, 0))) == NULL) {
            PyErr_Format(PyExc_TypeError, "json_lines: part %zd is neither bytes nor a tuple", j);
            goto done;
        }
        switch (kind[0]) {
        case 'i':
        case 'u':
            p->kind = kind[0] == 'i' ? P_INT : P_UINT;
            if (part_buffer(p, PyTuple_GET_ITEM(item, 1), n, 8, 1, "integer column") < 0)
                goto done;
            break;
        case 'f':
            p->kind = P_FLOAT;
            if (PyTuple_GET_SIZE(item) != 3 ||
                (p->ndigits = PyLong_AsLong(PyTuple_GET_ITEM(item, 2))) < 0 ||
                p->ndigits > MAX_DIGITS) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "json_lines: ('f', values, 0..8)");
                goto done;
            }
            if (part_buffer(p, PyTuple_GET_ITEM(item, 1), n, 8, 1, "float column") < 0)
                goto done;
            break;
        case 'a':
            p->kind = P_ADDR;
            if (part_buffer(p, PyTuple_GET_ITEM(item, 1), n, 1, 17, "address column") < 0)
                goto done;
            break;
        case 's':
            p->kind = P_STR;
            p->obj = PyTuple_GET_ITEM(item, 1);
            if (!PyList_Check(p->obj) || PyList_GET_SIZE(p->obj) != n) {
                PyErr_Format(PyExc_ValueError, "json_lines: part %zd: a list of %zd str", j, n);
                goto done;
            }
            if ((p->text = utf8_of(p->obj)) == NULL)
                goto done;
            p->ntext = n;
            break;
        case 't':
            p->kind = P_TOP;
            if (PyTuple_GET_SIZE(item) != 7 || !PyList_Check(PyTuple_GET_ITEM(item, 4))) {
                PyErr_SetString(PyExc_TypeError,
                                "json_lines: ('t', idx, values, weights, [names], vd, wd)");
                goto done;
            }
            p->obj = PyTuple_GET_ITEM(item, 4);
            p->ndigits = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 5));
            p->ndigits2 = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 6));
            if (PyErr_Occurred())
                goto done;
            if (p->ndigits < 0 || p->ndigits > MAX_DIGITS || p->ndigits2 < 0 ||
                p->ndigits2 > MAX_DIGITS) {
                PyErr_SetString(PyExc_ValueError, "json_lines: digits must be 0..8");
                goto done;
            }
            {
                Py_buffer probe;
                if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &probe, PyBUF_C_CONTIGUOUS) <
                    0)
                    goto done;
                p->k = n ? probe.len / 8 / n : 0;
                PyBuffer_Release(&probe);
            }
            if (part_buffer(p, PyTuple_GET_ITEM(item, 1), n, 8, p->k, "explanation indices") <
                    0 ||
                part_buffer(p, PyTuple_GET_ITEM(item, 2), n, 8, p->k, "explanation values") <
                    0 ||
                part_buffer(p, PyTuple_GET_ITEM(item, 3), n, 8, p->k, "explanation weights") < 0)
                goto done;
            if ((p->text = utf8_of(p->obj)) == NULL)
                goto done;
            p->ntext = PyList_GET_SIZE(p->obj);
            break;
        default:
            PyErr_Format(PyExc_ValueError, "json_lines: unknown part kind %s", kind);
            goto done;
        }
    }
    c.ts = PyEval_SaveThread();
    rc = make_lines(&c, &t, n, parts, nparts);
    if (rc == 0 && fd >= 0) {
        size_t off = 0;
        while (off < t.len) {
            ssize_t w = write(fd, t.buf + off, t.len - off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                write_errno = errno;
                break;
            }
            off += (size_t)w;
        }
    }
    PyEval_RestoreThread(c.ts);
    c.ts = NULL;
    if (rc == 0 && write_errno != 0) {
        errno = write_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (rc < 0) {
        if (c.err == E_NOMEM)
            PyErr_NoMemory();
        else if (c.err == E_INDEX)
            PyErr_SetString(PyExc_IndexError, c.msg);
        else if (c.err == E_VALUE)
            PyErr_SetString(PyExc_ValueError, c.msg);
        /* E_PYTHON: the exception is already set */
        goto done;
    }
    if (fd >= 0)
        out = PyLong_FromSize_t(t.len);
    else
        out = PyBytes_FromStringAndSize(t.buf ? t.buf : "", (Py_ssize_t)t.len);
done:
    if (parts != NULL) {
        for (Py_ssize_t j = 0; j < nparts; j++) {
            for (int b = 0; b < parts[j].nbuf; b++)
                PyBuffer_Release(&parts[j].b[b]);
            PyMem_Free(parts[j].text);
        }
        PyMem_Free(parts);
    }
    if (t.cap > ((size_t)64 << 20) || kept.buf != NULL) {
        /* Not kept past 64 MiB (one huge batch should not pin its memory), nor when
         * another call gave its buffer back first. */
        PyMem_RawFree(t.buf);
        t.buf = NULL;
        t.cap = 0;
    }
    t.len = 0;
    if (kept.buf == NULL)
        kept = t;
    return out;
}
