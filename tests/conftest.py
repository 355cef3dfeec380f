"""pytest setup shared by every test folder."""

from __future__ import annotations

import os

from tests.support import REPO, etcd_prefix, etcd_server, netns_pair, netns_router

__all__ = ["etcd_prefix", "etcd_server", "netns_pair", "netns_router"]

# BCC compiles against the header tree `make install` builds (scripts/kernel-headers.sh).
os.environ.setdefault("BCC_KERNEL_SOURCE", str(REPO / "build" / "kernel-headers"))
