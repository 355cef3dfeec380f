/* native/structs.h — layouts and constants of xdp/flow_types.h for Python (structs.c). */
#ifndef MLD_STRUCTS_H
#define MLD_STRUCTS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* structs() -> {name: (size, [(member, offset, elem_size, count, c_type), ...])}, every
 * struct of flow_types.h that crosses the kernel/user boundary, members in memory order
 * (padding members included); nested structs are named before the structs that hold them. */
PyObject *mld_py_structs(PyObject *mod, PyObject *unused);
/* constants() -> {name: value}, every integer #define of flow_types.h. */
PyObject *mld_py_constants(PyObject *mod, PyObject *unused);

#endif /* MLD_STRUCTS_H */
