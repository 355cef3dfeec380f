/* native/protowire.h — protobuf messages and float32 matrices from fixed-layout rows
 * (protowire.c). */
#ifndef MLD_PROTOWIRE_H
#define MLD_PROTOWIRE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* rows_to_protobuf(rows, itemsize, ops, strings) -> [bytes], see protowire.c. */
PyObject *mld_py_rows_to_protobuf(PyObject *mod, PyObject *args);

/* rows_to_matrix(rows, itemsize, ops, out): float32 matrix of columns, see protowire.c. */
PyObject *mld_py_rows_to_matrix(PyObject *mod, PyObject *args);

#endif /* MLD_PROTOWIRE_H */
