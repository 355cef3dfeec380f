/* native/scoring.c — the per-flow loops of detector/scoring.py and detector/bundle.py:
 * native._scoring.
 *
 * top_features: each flow's explanation (Scorer._explain): weight = importance of the
 *   flow's family forest times min(|x - center| / scale, cap), and the k largest weights in
 *   descending order. NumPy made it from five (flows, features) temporaries, argpartition
 *   and argsort; here one pass per row keeps the k + 1 largest by insertion. The result
 *   is the same as NumPy's wherever the k largest are strictly ordered and strictly above
 *   the rest; where they are not (equal weights among them or at the k-th place, or a NaN)
 *   the order NumPy gives depends on how its selection visits the row, so such rows are
 *   flagged and the caller takes them from the NumPy code itself.
 *
 * forest_predict: a compiled forest's ``predict(union Entry *row, int pred_margin, float
 *   *out)`` (a tl2cgen library) over every row of a float32 matrix, as tl2cgen's runtime
 *   does (a row copied into Entry slots, NaN as missing, out zeroed before the call),
 *   without its Python layer: loading the Predictor imports treelite and SciPy, a third of
 *   a second of `mld detector analyze`'s start-up, for a loop of C calls. The GIL is
 *   released; rows are split over ``nthread`` threads.
 *
 * Arithmetic is IEEE double as NumPy's (no contraction: setup.py builds with
 * -ffp-contract=off).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_K 256
#define MAX_THREADS 64

static int get_buffer(PyObject *obj, Py_buffer *b, char kind, Py_ssize_t itemsize, int writable,
                      const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) < 0)
        return -1;
    const char *f = b->format ? b->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    char got = *f;
    int ok = b->itemsize == itemsize &&
             (kind == 'f' ? got == (itemsize == 4 ? 'f' : 'd')
                          : (got == 'q' || got == 'l' || got == 'n') && itemsize == 8);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous %s%zd array, got format %s",
                     what, kind == 'f' ? "float" : "int", itemsize * 8, b->format);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *b, int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(&b[i]);
}

/* ---- top_features ------------------------------------------------------------------- */

/* Per row: the k + 1 largest weights (fewer when the row is shorter), by insertion. */
static int explain_row(const float *x, const double *imp, const double *center,
                       const double *scale, double cap, Py_ssize_t nf, Py_ssize_t k,
                       int64_t *idx_out, double *w_out)
{
    double top_w[MAX_K + 1];
    Py_ssize_t top_i[MAX_K + 1];
    Py_ssize_t keep = k < nf ? k + 1 : k, have = 0;
    int nan = 0;
    for (Py_ssize_t j = 0; j < nf; j++) {
        double d = fabs((double)x[j] - center[j]) / scale[j];
        if (d > cap) /* np.minimum: NaN stays NaN */
            d = cap;
        double w = imp[j] * d;
        if (isnan(w)) {
            nan = 1;
            continue;
        }
        if (have == keep && w < top_w[have - 1])
            continue;
        Py_ssize_t at = have < keep ? have++ : keep - 1;
        /* equal weights keep their arrival order; a tie is flagged below either way */
        while (at > 0 && w > top_w[at - 1]) {
            top_w[at] = top_w[at - 1];
            top_i[at] = top_i[at - 1];
            at--;
        }
        top_w[at] = w;
        top_i[at] = j;
    }
    int tied = nan;
    for (Py_ssize_t i = 0; i + 1 < have; i++)
        if (top_w[i] == top_w[i + 1])
            tied = 1;
    for (Py_ssize_t i = 0; i < k; i++) {
        idx_out[i] = i < have ? (int64_t)top_i[i] : 0;
        w_out[i] = i < have ? top_w[i] : 0.0;
    }
    return tied;
}

static PyObject *top_features(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o[10];
    double cap;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "OOOOOOdnOOO:top_features", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &cap, &k, &o[6], &o[7], &o[8]))
        return NULL;
    /* x (n, nf) float32; rows (n,) int64: the flow's family row of importances, -1 for the
     * mean importances; importances (families, nf), mean importances, center and scale
     * (nf,) float64; out: indices (n, k) int64, weights (n, k) float64, tied (n,) uint8. */
    static const char kinds[9] = {'f', 'i', 'f', 'f', 'f', 'f', 'i', 'f', 'u'};
    static const Py_ssize_t sizes[9] = {4, 8, 8, 8, 8, 8, 8, 8, 1};
    static const char *names[9] = {"x",     "rows",        "importances", "mean importances",
                                   "center", "scale",      "indices out", "weights out",
                                   "tied out"};
    Py_buffer b[9];
    int got = 0;
    for (; got < 9; got++) {
        int rc;
        if (kinds[got] == 'u') {
            rc = PyObject_GetBuffer(o[got], &b[got], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE);
            if (rc == 0 && b[got].itemsize != 1) {
                PyErr_SetString(PyExc_TypeError, "top_features: tied out must be uint8");
                PyBuffer_Release(&b[got]);
                rc = -1;
            }
        }
        else
            rc = get_buffer(o[got], &b[got], kinds[got], sizes[got], got >= 6, names[got]);
        if (rc < 0) {
            release(b, got);
            return NULL;
        }
    }
    Py_ssize_t nf = b[3].len / 8;
    Py_ssize_t n = nf > 0 ? b[0].len / 4 / nf : 0;
    Py_ssize_t nfam = b[2].len / 8 / (nf > 0 ? nf : 1);
    if (nf <= 0 || k <= 0 || k > nf || k > MAX_K || b[0].len != n * nf * 4 ||
        b[1].len != n * 8 || b[2].len != nfam * nf * 8 || b[4].len != nf * 8 ||
        b[5].len != nf * 8 || b[6].len != n * k * 8 || b[7].len != n * k * 8 || b[8].len != n) {
        release(b, 9);
        PyErr_SetString(PyExc_ValueError, "top_features: array shapes do not agree");
        return NULL;
    }
    const float *x = b[0].buf;
    const int64_t *rows = b[1].buf;
    const double *imp = b[2].buf, *mean = b[3].buf, *center = b[4].buf, *scale = b[5].buf;
    int64_t *idx = b[6].buf;
    double *w = b[7].buf;
    uint8_t *tied = b[8].buf;
    Py_ssize_t ntied = 0, bad = -1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        if (r >= nfam || r < -1) {
            bad = i;
            break;
        }
        const double *row_imp = r >= 0 ? imp + r * nf : mean;
        tied[i] = (uint8_t)explain_row(x + i * nf, row_imp, center, scale, cap, nf, k,
                                       idx + i * k, w + i * k);
        ntied += tied[i];
    }
    Py_END_ALLOW_THREADS
    release(b, 9);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "top_features: row %zd names no importance row", bad);
        return NULL;
    }
    return PyLong_FromSsize_t(ntied);
}

/* ---- forest_predict ----------------------------------------------------------------- */

typedef void (*predict_fn)(void *row, int pred_margin, float *out);

typedef struct {
    predict_fn fn;
    const float *x;
    float *out;
    Py_ssize_t nf, first, last;
    int ok;
} PredictJob;

static void *predict_rows(void *arg)
{
    PredictJob *job = arg;
    /* union Entry { int missing; float fvalue; int qvalue; }: 4 bytes with float32
     * thresholds; a fresh copy per row, since generated code may rewrite it (quantize). */
    union {
        int missing;
        float fvalue;
    } *entry = malloc((size_t)job->nf * sizeof(*entry));
    if (entry == NULL) {
        job->ok = 0;
        return NULL;
    }
    for (Py_ssize_t i = job->first; i < job->last; i++) {
        const float *row = job->x + i * job->nf;
        for (Py_ssize_t j = 0; j < job->nf; j++) {
            if (isnan(row[j]))
                entry[j].missing = -1;
            else
                entry[j].fvalue = row[j];
        }
        job->out[i] = 0.0f;
        job->fn(entry, 0, &job->out[i]);
    }
    free(entry);
    job->ok = 1;
    return NULL;
}

static PyObject *forest_predict(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long address;
    PyObject *xo, *outo;
    int nthread;
    if (!PyArg_ParseTuple(args, "KOOi:forest_predict", &address, &xo, &outo, &nthread))
        return NULL;
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "forest_predict: no predict function");
        return NULL;
    }
    Py_buffer b[2];
    if (get_buffer(xo, &b[0], 'f', 4, 0, "x") < 0)
        return NULL;
    if (get_buffer(outo, &b[1], 'f', 4, 1, "out") < 0) {
        release(b, 1);
        return NULL;
    }
    Py_ssize_t n = b[1].len / 4;
    if (b[0].ndim != 2 || b[0].shape[0] != n) {
        release(b, 2);
        PyErr_SetString(PyExc_ValueError, "forest_predict: x must be (rows, features), out (rows,)");
        return NULL;
    }
    Py_ssize_t nf = b[0].shape[1];
    if (nthread < 1)
        nthread = 1;
    if (nthread > MAX_THREADS)
        nthread = MAX_THREADS;
    if (nthread > n)
        nthread = n > 0 ? (int)n : 1;
    PredictJob jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < nthread; t++) {
        jobs[t] = (PredictJob){(predict_fn)(uintptr_t)address, b[0].buf, b[1].buf, nf,
                               n * t / nthread, n * (t + 1) / nthread, 0};
        if (t > 0)
            started[t] = pthread_create(&threads[t], NULL, predict_rows, &jobs[t]) == 0;
    }
    predict_rows(&jobs[0]);
    for (int t = 1; t < nthread; t++) {
        if (started[t])
            pthread_join(threads[t], NULL);
        else
            predict_rows(&jobs[t]); /* no thread: this one does its rows */
    }
    for (int t = 0; t < nthread; t++)
        ok &= jobs[t].ok;
    Py_END_ALLOW_THREADS
    release(b, 2);
    if (!ok)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef scoring_methods[] = {
    {"top_features", top_features, METH_VARARGS,
     "top_features(x, rows, importances, mean_importance, center, scale, cap, k, "
     "out_indices, out_weights, out_tied) -> rows tied (native/scoring.c)"},
    {"forest_predict", forest_predict, METH_VARARGS,
     "forest_predict(predict_address, x, out, nthread): a tl2cgen library's predict over "
     "every row of x (float32, rows x features) into out (float32, rows)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scoring_module = {
    PyModuleDef_HEAD_INIT, "_scoring", "Per-flow loops of scoring (native/scoring.c).", -1,
    scoring_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scoring(void)
{
    return PyModule_Create(&scoring_module);
}
