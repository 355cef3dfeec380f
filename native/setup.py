"""Build native._flowengine in place: ``cd native && python setup.py build_ext --inplace``.

`make install` runs this (see the Makefile's native section); the shared object lands beside
this file and is ignored by git. The flow engine's C definitions come from ../xdp/flow_*.h
(structs.c hands their layouts to Python).
"""

from __future__ import annotations

from pathlib import Path

import numpy
from setuptools import Extension, setup  # type: ignore[import-untyped]

setup(
    name="mld-native",
    version="0.1.0",
    packages=[],
    py_modules=[],
    ext_modules=[
        Extension(
            "_flowengine",
            sources=[
                "flowengine.c",
                "engine.c",
                "flow_table.c",
                "structs.c",
                "jsonnum.c",
                "windows.c",
                "fastwin.c",
                "protowire.c",
            ],
            depends=[
                "engine.h",
                "flow_table.h",
                "jsonnum.h",
                "windows.h",
                "fastwin.h",
                "protowire.h",
                "link_layer.h",
                "structs.h",
                *sorted(str(h) for h in Path("../xdp").glob("*.h")),
            ],
            include_dirs=["../xdp", numpy.get_include()],
            libraries=["pcap"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wshadow", "-std=gnu11"],
        ),
        # DNS query windows per (source, registered domain), fed from capture files or
        # live interfaces through libpcap (sniffer/dns_windows.py).
        Extension(
            "_dnswin",
            sources=["dnswin.c"],
            libraries=["pcap", "m"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wshadow", "-std=gnu11"],
        ),
        # The per-flow loops of scoring: explanations (Scorer._explain) and the compiled
        # forests over a batch without tl2cgen's Python layer. No contraction into FMA:
        # the explanation's weights must be NumPy's to the bit.
        Extension(
            "_scoring",
            sources=["scoring.c"],
            libraries=["m"],
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wshadow",
                "-std=gnu11",
                "-ffp-contract=off",
                "-pthread",
            ],
            extra_link_args=["-pthread"],
        ),
        # The RAG store's batch work: description words hashed to codes, and the feature
        # rows of serialized ScoredEvents (rag/describe.py, rag/indexed_store.py).
        Extension(
            "_ragtext",
            sources=["ragtext.c"],
            libraries=["z"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wshadow", "-std=gnu11"],
        ),
    ],
)
