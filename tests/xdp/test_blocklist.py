"""The pinned blocklist: drops by source prefix, shared with other processes, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, NetnsPair, require_root_and
from xdp import Blocklist, BlocklistError, BpffsError, prefix_key

A6, B6 = "2001:db8:1::1", "2001:db8:1::2"
V4_B_HEX = "ffffc0000202"  # ::ffff:192.0.2.2, the pair's b end


def ping(p: NetnsPair, dst: str) -> int:
    cmd = ["ip", "netns", "exec", p.ns_a, "ping", "-n", "-q", "-c", "2", "-i", "0.1", "-W", "1"]
    return subprocess.run([*cmd, dst], capture_output=True, timeout=30).returncode


@pytest.mark.bpf
@pytest.mark.netns
def test_block_and_unblock_v4_and_v6(netns_pair: NetnsPair, monitors: Any) -> None:
    p = netns_pair
    for ns, dev, addr in ((p.ns_a, p.dev_a, A6), (p.ns_b, p.dev_b, B6)):
        p.run(ns, "ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
    mon = monitors(p.ns_b, [p.dev_b])
    assert ping(p, p.addr_b) == 0 and ping(p, B6) == 0

    with Blocklist(monitors.pin_dir) as bl:  # this test process is "another process"
        assert bl.add(f"{p.addr_a}/32") is True
        assert bl.add(p.addr_a) is False  # already there
        assert ping(p, p.addr_b) != 0
        assert ping(p, B6) == 0  # only the IPv4 source is blocked
        stats = mon.fresh_stats()
        assert stats["blocked_packets"] >= 2 and stats["blocked_bytes"] >= 2 * 98
        assert dict(bl.entries())[f"{p.addr_a}/32"] >= 2

        assert bl.add("2001:db8:1::/64") is True
        assert ping(p, B6) != 0
        # A third process sees the same map, counters included.
        listing = subprocess.run(
            [sys.executable, "-c", "import sys; from xdp import Blocklist; "
             "print(Blocklist(sys.argv[1]).entries())", str(monitors.pin_dir)],
            capture_output=True, text=True, timeout=30, check=True,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        ).stdout  # fmt: skip
        assert "('2001:db8:1::/64', " in listing and f"('{p.addr_a}/32', " in listing

        assert bl.remove(f"{p.addr_a}/32") is True
        assert bl.remove(f"{p.addr_a}/32") is False
        assert bl.remove("2001:db8:1::/64") is True
        assert bl.entries() == []
    assert ping(p, p.addr_b) == 0 and ping(p, B6) == 0
    assert mon.stop() == 0, mon.err()
    # Blocked packets never enter the flow table: the IPv4 echo flow A -> B holds only the
    # two rounds that got through.
    v4 = [e for e in mon.events() if e["key"]["addr_hi"].endswith(V4_B_HEX)]
    assert sum(e["state"]["dir"][0]["packets"] for e in v4 if e["key"]["protocol"] == 1) == 4
    assert mon.stats()["blocked_packets"] >= 4


def test_prefix_parsing() -> None:
    assert prefix_key("192.0.2.7") == (128, bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7]))
    assert prefix_key("192.0.2.0/24")[0] == 96 + 24
    assert prefix_key("2001:db8::/32") == (32, bytes.fromhex("20010db8") + bytes(12))
    with pytest.raises(BlocklistError, match=r"did you mean 192\.0\.2\.0/24"):
        prefix_key("192.0.2.7/24")
    with pytest.raises(BlocklistError, match="bad blocklist prefix 'not-an-ip'"):
        prefix_key("not-an-ip")


def test_missing_pin_is_a_clear_error(tmp_path: Path) -> None:
    require_root_and()
    with pytest.raises(BpffsError, match="start the flow monitor first"):
        Blocklist("/sys/fs/bpf/mldt-does-not-exist")
