/* native/windows.h — sliding windows per key over batches (windows.c). */
#ifndef MLD_WINDOWS_H
#define MLD_WINDOWS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* native._flowengine.Windows; see windows.c and sniffer/sliding_window.py. */
extern PyTypeObject MldWindowsType;

#endif /* MLD_WINDOWS_H */
