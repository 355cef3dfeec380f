/* native/jsonnum.h — JSON number text of whole float64 arrays (jsonnum.c). */
#ifndef MLD_JSONNUM_H
#define MLD_JSONNUM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* json_floats(values, ndigits) -> [str]: json.dumps(round(v, ndigits)) of every value of a
 * contiguous 1-D float64 buffer, 0 <= ndigits <= 8. */
PyObject *mld_py_json_floats(PyObject *mod, PyObject *args);
/* json_addresses(keys) -> [str]: json.dumps(str(ipaddress.ip_address(addr))) of every
 * (n, 17) row of length (4 or 16) + 16 address bytes (sniffer.batch_windows.address_keys). */
PyObject *mld_py_json_addresses(PyObject *mod, PyObject *arg);
/* json_lines(n, parts) -> bytes: n JSON lines assembled from constant parts and columns
 * (numbers, addresses, texts, explanation lists); see jsonnum.c. */
PyObject *mld_py_json_lines(PyObject *mod, PyObject *args);

#endif /* MLD_JSONNUM_H */
