/* native/fastwin.h — the fast rules' failure and rhythm windows over batches (fastwin.c). */
#ifndef MLD_FASTWIN_H
#define MLD_FASTWIN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* native._flowengine.RuleWindows; see fastwin.c and sniffer/fast_rules.py. */
extern PyTypeObject MldRuleWindowsType;

#endif /* MLD_FASTWIN_H */
