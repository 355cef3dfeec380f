"""Errors of the XDP loader, translated from BCC and the bpf syscall at the boundary.

They extend the project hierarchy drawn in :mod:`base.errors`::

    MldError
    └── XdpError               the XDP program cannot be built, loaded, attached or read
        ├── NotRootError       BPF and XDP need root (CAP_BPF + CAP_NET_ADMIN)
        ├── InterfaceError     an interface is missing or refuses the program
        ├── CompileError       BCC could not compile or the verifier rejected the program
        ├── BpffsError         bpffs is not mounted and cannot be, or a pin is wrong
        └── BlocklistError     a blocklist prefix is malformed or the map refused it

Messages say what went wrong and what to do next.
"""

from __future__ import annotations

from base.errors import MldError

__all__ = [
    "BlocklistError",
    "BpffsError",
    "CompileError",
    "InterfaceError",
    "NotRootError",
    "XdpError",
]


class XdpError(MldError):
    """The XDP program cannot be built, loaded, attached, or its maps read."""


class NotRootError(XdpError):
    """The process lacks the privileges BPF needs."""


class InterfaceError(XdpError):
    """An interface does not exist or refused the XDP program."""


class CompileError(XdpError):
    """BCC failed to compile the program or the verifier rejected it."""


class BpffsError(XdpError):
    """bpffs is missing and cannot be mounted, or a pinned object is not what we expect."""


class BlocklistError(XdpError):
    """A blocklist prefix is malformed, or the blocklist map refused an operation."""
