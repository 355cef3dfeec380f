"""The XDP stage: the BPF flow program (flow_monitor.bpf.c, built on flow.h) and its loader.

Public API::

    FlowMonitor        load, attach, poll finished flows, sweep idle ones, flush, stats
    Blocklist          the pinned source-prefix blocklist (with expiry), usable from any process
    program_attached   is the pinned blocklist used by a loaded XDP program? (bool, why)
    raise_on_sigterm   SIGTERM -> SystemExit so monitors detach in `finally`
    XdpError, ...      errors (see xdp.errors)
"""

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
    from xdp.blocklist import (
        DEFAULT_PIN_DIR,
        BlockEntry,
        Blocklist,
        BlocklistProgram,
        blocklist_enforced,
        prefix_key,
        program_attached,
    )
    from xdp.errors import (
        BlocklistError,
        BpffsError,
        CompileError,
        InterfaceError,
        NotRootError,
        XdpError,
    )
    from xdp.monitor import BPF_SOURCE, FlowMonitor, Mode, OverloadSettings, raise_on_sigterm

__all__ = [
    "BPF_SOURCE",
    "DEFAULT_PIN_DIR",
    "BlockEntry",
    "Blocklist",
    "BlocklistError",
    "BlocklistProgram",
    "BpffsError",
    "CompileError",
    "FlowMonitor",
    "InterfaceError",
    "Mode",
    "NotRootError",
    "OverloadSettings",
    "XdpError",
    "blocklist_enforced",
    "prefix_key",
    "program_attached",
    "raise_on_sigterm",
]

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "xdp.blocklist": (
            "DEFAULT_PIN_DIR",
            "BlockEntry",
            "Blocklist",
            "BlocklistProgram",
            "blocklist_enforced",
            "prefix_key",
            "program_attached",
        ),
        "xdp.errors": (
            "BlocklistError",
            "BpffsError",
            "CompileError",
            "InterfaceError",
            "NotRootError",
            "XdpError",
        ),
        "xdp.monitor": (
            "BPF_SOURCE",
            "FlowMonitor",
            "Mode",
            "OverloadSettings",
            "raise_on_sigterm",
        ),
    },
)
