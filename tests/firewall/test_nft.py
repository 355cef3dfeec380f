"""The nftables fallback: our own table, blocks that drop one source and expire by themselves."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from base.errors import FirewallError
from firewall.nft import NftBackend
from tests.support import NetnsPair, require_root_and, wait_for

OTHER_V4 = "192.0.2.3"  # a second source on the a side; never blocked by these tests
A6, B6, OTHER_V6 = "2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::3"

pytestmark = pytest.mark.netns


@pytest.fixture
def pair(netns_pair: NetnsPair) -> NetnsPair:
    """The pair with a second IPv4 source and IPv6 addresses on a, IPv6 on b."""
    require_root_and("nft", "ping")
    p = netns_pair
    p.run(p.ns_a, "ip", "addr", "add", f"{OTHER_V4}/24", "dev", p.dev_a)
    for ns, dev, addrs in ((p.ns_a, p.dev_a, (A6, OTHER_V6)), (p.ns_b, p.dev_b, (B6,))):
        for addr in addrs:
            p.run(ns, "ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
    return p


@pytest.fixture
def nft(pair: NetnsPair) -> Iterator[NftBackend]:
    """The backend in b's namespace, set up; removed with the namespace in any case."""
    backend = NftBackend(netns=pair.ns_b)
    backend.setup()
    yield backend


def reaches(p: NetnsPair, src: str, dst: str, count: int = 3) -> bool:
    """Whether any of ``count`` pings from ``src`` (on a) to ``dst`` (on b) is answered."""
    cmd = ["ip", "netns", "exec", p.ns_a, "ping", "-n", "-q", "-c", str(count), "-i", "0.2"]
    cmd += ["-W", "1", "-I", src, dst]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def ruleset(p: NetnsPair) -> list[dict[str, Any]]:
    out = p.run(p.ns_b, "nft", "-j", "list", "ruleset").stdout
    objs: list[dict[str, Any]] = json.loads(out)["nftables"]
    return objs


def tables(p: NetnsPair) -> set[tuple[object, object]]:
    return {(o["table"]["family"], o["table"]["name"]) for o in ruleset(p) if "table" in o}


def test_setup_is_idempotent_and_teardown_touches_only_our_table(
    pair: NetnsPair, caplog: pytest.LogCaptureFixture
) -> None:
    p = pair
    p.run(p.ns_b, "nft", "add", "table", "inet", "other")
    p.run(p.ns_b, "nft", "add", "set", "inet", "other", "keep", "{ type ipv4_addr; }")
    p.run(p.ns_b, "nft", "add", "element", "inet", "other", "keep", "{ 192.0.2.9 }")
    nft = NftBackend(netns=p.ns_b)
    assert nft.available()[0]
    with caplog.at_level(logging.INFO, logger="firewall.nft"):
        nft.setup()
    assert "re-adding an element" in caplog.text  # updates (6.18) or keeps (6.1)
    assert tables(p) == {("inet", "other"), ("inet", "mld")}
    sets = {o["set"]["name"]: o["set"] for o in ruleset(p) if "set" in o}
    assert sets["block4"]["type"] == "ipv4_addr" and sets["block6"]["type"] == "ipv6_addr"
    assert set(sets) == {"block4", "block6", "keep"}  # the probe set is gone
    for name in ("block4", "block6"):
        assert set(sets[name]["flags"]) == {"interval", "timeout"}
    chains = [o["chain"] for o in ruleset(p) if "chain" in o]
    assert [(c["table"], c["hook"], c["prio"]) for c in chains] == [("mld", "prerouting", -300)]

    nft.block(p.addr_a, 32, 60)
    with caplog.at_level(logging.WARNING, logger="firewall.nft"):
        nft.setup()  # a leftover table (as after a crash) is replaced, and said so
    assert "left over" in caplog.text
    assert nft.entries() == []
    assert tables(p) == {("inet", "other"), ("inet", "mld")}

    nft.close()  # the agent's stop
    assert tables(p) == {("inet", "other")}
    keep = p.run(p.ns_b, "nft", "list", "set", "inet", "other", "keep").stdout
    assert "192.0.2.9" in keep
    nft.teardown()  # already gone: no error
    with pytest.raises(FirewallError, match=r"setup\(\)"):
        nft.entries()


def test_block_drops_one_source_until_nftables_expires_it(pair: NetnsPair, nft: NftBackend) -> None:
    p = pair
    assert reaches(p, p.addr_a, p.addr_b) and reaches(p, OTHER_V4, p.addr_b)
    nft.block(p.addr_a, 32, 2)
    [(prefix, expires)] = nft.entries()
    assert prefix == f"{p.addr_a}/32" and expires is not None and 0 <= expires <= 2
    assert not reaches(p, p.addr_a, p.addr_b, count=2)
    assert reaches(p, OTHER_V4, p.addr_b)  # another source still gets through
    assert nft.dropped()[0] >= 2
    wait_for(lambda: nft.entries() == [], timeout=5, what="the nftables timeout")
    assert reaches(p, p.addr_a, p.addr_b)


@pytest.mark.parametrize("readd_updates", [True, False], ids=["new-kernel", "old-kernel"])
def test_block_again_sets_the_new_timeout(
    pair: NetnsPair, nft: NftBackend, readd_updates: bool
) -> None:
    # Both ways of extending run on any kernel: delete + add (what kernels whose re-add
    # keeps the old timeout need) and plain re-add (where the probe found it updates).
    if not readd_updates:
        nft._readd_updates = False
    nft.block("198.51.100.7", 32, 5)
    nft.block("198.51.100.7", 32, 600)  # extend: longer
    [(_, expires)] = nft.entries()
    assert expires is not None and 590 <= expires <= 600
    nft.block("198.51.100.7", 32, 30)  # the new timeout replaces the old, also when shorter
    [(_, expires)] = nft.entries()
    assert expires is not None and 28 <= expires <= 30
    # IPv4-mapped IPv6 goes to block4; host bits are cleared; a batch writes many at once.
    nft.block("::ffff:198.51.100.9", 128, 60)
    nft.block("203.0.113.77", 24, 60)
    assert nft.block_many([(f"10.9.{i // 256}.{i % 256}", 32, 60) for i in range(1000)]) == 1000
    prefixes = [prefix for prefix, _ in nft.entries()]
    assert len(prefixes) == 1003
    assert {"198.51.100.9/32", "203.0.113.0/24", "10.9.3.231/32"} <= set(prefixes)


def test_unblock_flush_and_ipv6(pair: NetnsPair, nft: NftBackend) -> None:
    p = pair
    assert reaches(p, A6, B6) and reaches(p, OTHER_V6, B6)
    nft.block_many([(A6, 128, 60), (p.addr_a, 32, 60)])
    assert not reaches(p, A6, B6, count=2)
    assert reaches(p, OTHER_V6, B6)
    assert not reaches(p, p.addr_a, p.addr_b, count=2)
    nft.unblock(A6, 128)
    nft.unblock(A6, 128)  # no longer there: no error
    assert reaches(p, A6, B6)
    assert [prefix for prefix, _ in nft.entries()] == [f"{p.addr_a}/32"]

    nft.block("2001:db8:1::", 64, 60)  # the whole subnet
    assert not reaches(p, OTHER_V6, B6, count=2)
    nft.flush()
    assert nft.entries() == []
    assert reaches(p, OTHER_V6, B6) and reaches(p, p.addr_a, p.addr_b)


def test_errors_name_the_cause_and_the_next_step(pair: NetnsPair, nft: NftBackend) -> None:
    with pytest.raises(FirewallError, match="prefix length"):
        nft.block("not-an-address", 32, 60)
    with pytest.raises(FirewallError, match="ttl_s"):
        nft.block("192.0.2.50", 32, 0)
    nft.block("203.0.113.0", 24, 60)
    with pytest.raises(FirewallError, match="overlap"):
        nft.block("203.0.113.5", 32, 60)
    # In a batch, one bad block does not stop the others.
    with pytest.raises(FirewallError, match="1 of 2 blocks not applied"):
        nft.block_many([("203.0.113.6", 32, 60), ("198.51.100.1", 32, 60)])
    assert "198.51.100.1/32" in dict(nft.entries())

    ok, why = NftBackend(nft="/nonexistent/nft").available()
    assert not ok and "install nftables" in why
    ok, why = NftBackend(netns="mldt-no-such-ns").available()
    assert not ok and "does not exist" in why
