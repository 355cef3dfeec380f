"""The pinned blocklist: drops by source prefix, expiry, shared with other processes, errors."""

from __future__ import annotations

import ctypes as ct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from native import structs
from tests.support import REPO, NetnsPair, require_root_and
from xdp import (
    Blocklist,
    BlocklistError,
    BpffsError,
    blocklist_enforced,
    prefix_key,
    program_attached,
)
from xdp.blocklist import _Block, _LpmKey

A6, B6 = "2001:db8:1::1", "2001:db8:1::2"
V4_B_HEX = "ffffc0000202"  # ::ffff:192.0.2.2, the pair's b end


def ping(p: NetnsPair, dst: str, count: int = 2) -> int:
    cmd = ["ip", "netns", "exec", p.ns_a, "ping", "-n", "-q", "-c", str(count), "-i", "0.1"]
    return subprocess.run([*cmd, "-W", "1", dst], capture_output=True, timeout=30).returncode


def add_v6(p: NetnsPair) -> None:
    for ns, dev, addr in ((p.ns_a, p.dev_a, A6), (p.ns_b, p.dev_b, B6)):
        p.run(ns, "ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")


@pytest.mark.bpf
@pytest.mark.netns
def test_block_and_unblock_v4_and_v6(netns_pair: NetnsPair, monitors: Any) -> None:
    p = netns_pair
    add_v6(p)
    mon = monitors(p.ns_b, [p.dev_b])
    assert ping(p, p.addr_b) == 0 and ping(p, B6) == 0

    with Blocklist(monitors.pin_dir) as bl:  # this test process is "another process"
        assert bl.add(f"{p.addr_a}/32") is True
        assert bl.add(p.addr_a) is False  # already there
        assert ping(p, p.addr_b) != 0
        assert ping(p, B6) == 0  # only the IPv4 source is blocked
        stats = mon.fresh_stats()
        assert stats["blocked_packets"] >= 2 and stats["blocked_bytes"] >= 2 * 98
        assert bl.entries() == [(f"{p.addr_a}/32", bl.entries()[0].drops, None)]
        assert bl.entries()[0].drops >= 2

        assert bl.add("2001:db8:1::/64") is True
        assert ping(p, B6) != 0
        # A third process sees the same map, counters included.
        listing = subprocess.run(
            [sys.executable, "-c", "import sys; from xdp import Blocklist; "
             "print(Blocklist(sys.argv[1]).entries())", str(monitors.pin_dir)],
            capture_output=True, text=True, timeout=30, check=True,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        ).stdout  # fmt: skip
        assert "prefix='2001:db8:1::/64'" in listing and f"prefix='{p.addr_a}/32'" in listing

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


@pytest.mark.bpf
@pytest.mark.netns
def test_entries_lapse_on_time_without_removal(netns_pair: NetnsPair, monitors: Any) -> None:
    p = netns_pair
    add_v6(p)
    assert blocklist_enforced(monitors.pin_dir) is False  # nothing pinned yet
    assert "no blocklist pinned at" in program_attached(monitors.pin_dir)[1]
    mon = monitors(p.ns_b, [p.dev_b])
    assert ping(p, p.addr_b) == 0 and ping(p, B6) == 0
    ttl = 4.0
    with Blocklist(monitors.pin_dir) as bl:
        assert bl.in_use() and blocklist_enforced(monitors.pin_dir)
        assert [x.type for x in bl.programs()] == [6]  # the monitor's XDP program
        t0 = time.time()
        assert bl.add(p.addr_a, ttl_s=ttl) is True
        assert bl.add("2001:db8:1::/64", ttl_s=ttl) is True
        assert bl.add("198.51.100.0/24") is True  # no expiry: purge leaves it
        assert ping(p, p.addr_b, count=1) != 0 and ping(p, B6, count=1) != 0
        by = {e.prefix: e for e in bl.entries()}
        assert set(by) == {f"{p.addr_a}/32", "2001:db8:1::/64", "198.51.100.0/24"}
        for pfx in (f"{p.addr_a}/32", "2001:db8:1::/64"):
            assert by[pfx].drops >= 1
            assert by[pfx].expires_at == pytest.approx(t0 + ttl, abs=0.2)
        assert by["198.51.100.0/24"].drops == 0 and by["198.51.100.0/24"].expires_at is None
        assert bl.expired() == []
        assert bl.expired(now=t0 + ttl + 1) != []  # a future "now" sees them lapsed

        time.sleep(max(0.0, t0 + ttl + 0.2 - time.time()))
        # Lapsed but still in the map: the program lets the sources through again.
        assert ping(p, p.addr_b) == 0 and ping(p, B6) == 0
        after = {e.prefix: e for e in bl.entries()}
        assert set(after) == set(by)
        for pfx in (f"{p.addr_a}/32", "2001:db8:1::/64"):
            assert after[pfx].drops == by[pfx].drops  # nothing dropped after expiry
        lapsed = [e.prefix for e in bl.expired()]
        assert lapsed == sorted([f"{p.addr_a}/32", "2001:db8:1::/64"])
        assert [e.prefix for e in bl.purge_expired()] == lapsed
        assert [e.prefix for e in bl.entries()] == ["198.51.100.0/24"]
        assert bl.purge_expired() == []
        attached, why = program_attached(monitors.pin_dir)
        assert attached and why.startswith("XDP program xdp_flow_monito (id ")
    assert mon.stop() == 0, mon.err()
    # The pin outlives the monitor, but no program enforces it any more.
    assert program_attached(monitors.pin_dir) == (
        False,
        f"{monitors.pin_dir}/blocklist is pinned but no XDP program uses it (no flow monitor "
        "running)",
    )


@pytest.mark.bpf
@pytest.mark.netns
def test_readd_sets_expiry_and_keeps_drops(netns_pair: NetnsPair, monitors: Any) -> None:
    p = netns_pair
    monitors(p.ns_b, [p.dev_b])
    with Blocklist(monitors.pin_dir) as bl:
        assert bl.add(p.addr_a, ttl_s=60) is True
        assert ping(p, p.addr_b, count=1) != 0
        (first,) = bl.entries()
        assert first.drops >= 1 and first.expires_at is not None
        at = time.time() + 3600
        assert bl.add(p.addr_a, expires_at=at) is False  # already there: expiry moved
        (moved,) = bl.entries()
        assert moved.drops == first.drops and moved.expires_at == pytest.approx(at, abs=0.01)
        assert bl.add(p.addr_a) is False
        assert bl.entries() == [(first.prefix, first.drops, None)]
        with pytest.raises(BlocklistError, match="ttl_s must be > 0"):
            bl.add(p.addr_a, ttl_s=0)
        with pytest.raises(BlocklistError, match="already past"):
            bl.add(p.addr_a, expires_at=time.time() - 1)
        with pytest.raises(BlocklistError, match="not both"):
            bl.add(p.addr_a, ttl_s=1, expires_at=at)


def test_block_structs_come_from_flow_types_h() -> None:
    assert _Block is structs.ctype("mld_block") and _LpmKey is structs.ctype("mld_lpm_key")
    assert [f[0] for f in _Block._fields_] == ["drops", "expires_ns"]
    assert ct.sizeof(_Block) == 16
    # The kernel's LPM trie key ABI: a u32 prefix length, then the address bytes.
    assert (_LpmKey.prefixlen.offset, _LpmKey.prefixlen.size) == (0, 4)
    assert (_LpmKey.addr.offset, _LpmKey.addr.size, ct.sizeof(_LpmKey)) == (4, 16, 20)


def test_stale_pin_layout_is_a_clear_error(tmp_path: Path) -> None:
    require_root_and("bpftool")
    pin_dir = Path("/sys/fs/bpf") / f"mldt-stale-{tmp_path.name[-8:]}"
    pin_dir.mkdir()
    try:
        subprocess.run(
            ["bpftool", "map", "create", str(pin_dir / "blocklist"), "type", "lpm_trie",
             "key", "20", "value", "8", "entries", "16", "name", "blocklist", "flags", "1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        with pytest.raises(BpffsError, match="remove the stale pin"):
            Blocklist(pin_dir)
        attached, why = program_attached(pin_dir)
        assert not attached and "remove the stale pin" in why
    finally:
        (pin_dir / "blocklist").unlink(missing_ok=True)
        pin_dir.rmdir()


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
