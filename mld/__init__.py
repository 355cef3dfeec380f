"""ML Defender's command line: ``mld`` and its subcommands (``mld.cli``), and the one
start-up every long-running service's run command hands its parts to (``mld.runner``).

The top of the layering: ``mld.cli`` imports every component's command line and nothing
imports it but the console script; the components' cli.py import ``mld.runner``.

Importing this package is the first thing the ``mld`` script does, before NumPy is loaded:
for the offline commands of ``mld.grammar.SINGLE_BLAS_THREAD`` it sets
``OPENBLAS_NUM_THREADS=1`` (unless the environment already sets it), so OpenBLAS starts no
worker thread that would only spin.
"""

from __future__ import annotations

import os
import sys

from base import __version__

__all__ = ["__version__"]


def _single_blas_thread(argv: list[str]) -> bool:
    """True when ``argv`` is an ``mld`` command line (the script, or ``python -m mld...``,
    whose argv[0] is ``-m`` while this package is imported) of an offline command."""
    if not argv or (os.path.basename(argv[0]) != "mld" and argv[0] != "-m"):
        return False
    from mld.grammar import SINGLE_BLAS_THREAD, command_action

    return command_action(argv[1:]) in SINGLE_BLAS_THREAD


if "numpy" not in sys.modules and _single_blas_thread(sys.argv):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
