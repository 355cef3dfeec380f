"""Errors the loader raises before or instead of touching the kernel."""

from __future__ import annotations

import ctypes as ct

import pytest

from native import structs
from tests.support import require_root_and
from xdp import CompileError, FlowMonitor, InterfaceError, XdpError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ifaces": []}, "distinct interface names"),
        ({"ifaces": "eth0"}, "distinct interface names"),
        ({"ifaces": ["a"], "ringbuf_pages": 3}, "power of two"),
        ({"ifaces": ["a"], "active_timeout_s": 7200}, r"\(0, 3600\]"),
        ({"ifaces": ["a"], "mode": "turbo"}, "mode must be"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(XdpError, match=match):
        FlowMonitor(**kwargs)  # type: ignore[arg-type]


@pytest.mark.bpf
def test_missing_interface_says_how_to_list_them() -> None:
    require_root_and()
    mon = FlowMonitor(["mldt-nope0"], pin_dir="/sys/fs/bpf/mldt-unused")
    with pytest.raises(
        InterfaceError, match=r"no interface 'mldt-nope0'; list them with `ip link`"
    ):
        mon.attach()
    mon.close()


def test_poll_before_attach() -> None:
    with pytest.raises(XdpError, match="call attach"):
        FlowMonitor(["lo"]).poll(0)


def test_a_map_laid_out_unlike_native_is_a_compile_error() -> None:
    class Block(ct.Structure):  # struct mld_block as another compiler might see it
        _fields_ = (("drops", ct.c_uint32), ("expires_ns", ct.c_uint64))

    FlowMonitor._check_layouts((structs.ctype("mld_flow_state"), "mld_flow_state"))
    with pytest.raises(CompileError, match="struct mld_block unlike native"):
        FlowMonitor._check_layouts((Block, "mld_block"))
