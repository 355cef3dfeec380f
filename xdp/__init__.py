"""The XDP stage: the BPF flow program (flow_monitor.bpf.c, built on flow.h) and its loader.

Public API::

    FlowMonitor        load, attach, poll finished flows, sweep idle ones, flush, stats
    Blocklist          the pinned source-prefix blocklist, usable from any process
    raise_on_sigterm   SIGTERM -> SystemExit so monitors detach in `finally`
    XdpError, ...      errors (see xdp.errors)
"""

from xdp.blocklist import DEFAULT_PIN_DIR, Blocklist, prefix_key
from xdp.errors import (
    BlocklistError,
    BpffsError,
    CompileError,
    InterfaceError,
    NotRootError,
    XdpError,
)
from xdp.flow_h import FLOW_H, flow_h_constants
from xdp.monitor import BPF_SOURCE, FlowMonitor, Mode, raise_on_sigterm

__all__ = [
    "BPF_SOURCE",
    "DEFAULT_PIN_DIR",
    "FLOW_H",
    "Blocklist",
    "BlocklistError",
    "BpffsError",
    "CompileError",
    "FlowMonitor",
    "InterfaceError",
    "Mode",
    "NotRootError",
    "XdpError",
    "flow_h_constants",
    "prefix_key",
    "raise_on_sigterm",
]
