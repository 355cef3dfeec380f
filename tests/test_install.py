"""What `make install` provides works: Debian's BCC from the venv, compiling XDP programs
against the merged kernel-header tree, attached in a namespace we create."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import NetnsPair, require_root_and

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

# Counts every packet it sees, then lets it pass.
XDP_COUNTER = textwrap.dedent(
    """
    BPF_ARRAY(seen, u64, 1);
    int count(struct xdp_md *ctx) {
        u32 zero = 0;
        u64 *n = seen.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        return XDP_PASS;
    }
    """
)

# Runs inside namespace b: attach (generic mode), let namespace a ping, read the count, detach.
ATTACH_AND_COUNT = """
import subprocess, sys
from bcc import BPF
dev, ns_a, addr_b, text = sys.argv[1:5]
b = BPF(text=text)
fn = b.load_func("count", BPF.XDP)
b.attach_xdp(dev, fn, BPF.XDP_FLAGS_SKB_MODE)
try:
    subprocess.run(["ip", "netns", "exec", ns_a, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr_b],
                   check=True, capture_output=True, timeout=20)
    print(b["seen"][b["seen"].Key(0)].value)
finally:
    b.remove_xdp(dev, BPF.XDP_FLAGS_SKB_MODE)
"""


def test_bcc_is_debians_and_importable_from_the_venv() -> None:
    import bcc

    assert Path(bcc.__file__).resolve().is_relative_to("/usr/lib/python3/dist-packages/bcc")


def test_kernel_header_tree_is_merged() -> None:
    tree = Path(os.environ["BCC_KERNEL_SOURCE"])
    assert (tree / ".mld-headers").is_file(), f"{tree} is missing: run `make install`"
    assert (tree / "include" / "linux" / "bpf.h").is_file()  # from -common
    assert (tree / "include" / "generated" / "autoconf.h").is_file()  # from -amd64
    assert (tree / "arch" / "x86" / "include" / "generated").is_dir()


def test_xdp_program_compiles_attaches_and_counts_packets(netns_pair: NetnsPair) -> None:
    require_root_and("ping")
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns_pair.ns_b,
            sys.executable,
            "-c",
            ATTACH_AND_COUNT,
            netns_pair.dev_b,
            netns_pair.ns_a,
            netns_pair.addr_b,
            XDP_COUNTER,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 3 echo requests plus ARP; every one of them crossed the XDP hook on dev_b.
    assert int(proc.stdout.strip().splitlines()[-1]) >= 3
    links = netns_pair.run(netns_pair.ns_b, "ip", "link", "show", netns_pair.dev_b).stdout
    assert "xdp" not in links, "the program must be detached"
