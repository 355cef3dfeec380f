/* native/jsonnum.c — JSON text of whole arrays (numbers, addresses), exactly as Python writes it.
 *
 * json_floats(values, ndigits) gives, for every float64 of a 1-D array, the text that
 * json.dumps(round(v, ndigits)) gives in Python: the value rounded to ndigits decimals
 * (correctly, ties to even on the exact binary value, as float.__round__), then the
 * shortest repr that reads back to that double (float.__repr__), "NaN"/"Infinity" for
 * non-finite values. The offline JSON writer (detector/jsonlines.py) formats whole columns
 * with it instead of calling round() and repr() once per value.
 *
 * Fast path: y = v * 10^n is exact to half an ulp, so unless y lies within a few ulps of a
 * tie, k = rint(y) is the integer Python's round picks, and k / 10^n (one correctly
 * rounded division of two exact doubles) is the double it returns. While |k| < 2^50 the
 * decimals of k / 10^n are closer together than the double's ulp, so no shorter decimal
 * reads back to the same double and the repr is k's digits with the point put back and
 * trailing zeros dropped ("1.0" keeps one). Everything else (near ties, huge values,
 * values that Python prints with an exponent) goes through CPython's own routines, the
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

/* Fast path into buf; returns the length, or 0 when the slow path must decide. */
static int fast_text(double v, int ndigits, char *buf)
{
    double y = v * POW10[ndigits];
    double ay = fabs(y);
    double frac;
    int64_t k;
    uint64_t mag;
    char digits[24];
    int nd = 0, len = 0, point, last;

    if (!(ay < 1125899906842624.0)) /* 2^50; also rejects NaN */
        return 0;
    frac = ay - floor(ay);
    if (fabs(frac - 0.5) <= ay * 1e-15 + 1e-300)
        return 0; /* within rounding error of a tie */
    k = (int64_t)nearbyint(y);
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
        len += sprintf(buf + len, "%x", h[i]);
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
            len += sprintf(buf + len, "%u.%u.%u.%u", row[1], row[2], row[3], row[4]);
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
