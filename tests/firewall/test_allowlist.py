"""Tests of the allowlist matching and of reading the host's own addresses from /proc/net
text (a copy of a real host's files in tmp_path, and the live /proc/net)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from firewall.allowlist import (
    Allowlist,
    local_addresses,
    parse_fib_trie,
    parse_if_inet6,
    parse_ipv6_route_gateways,
    parse_route_gateways,
)

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 127.0.0.1
              /32 host LOCAL
"""
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
"""
ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
IPV6_ROUTE = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
)


def test_parsers_read_proc_net_text() -> None:
    v4, v6 = ipaddress.IPv4Address, ipaddress.IPv6Address
    assert parse_fib_trie(FIB_TRIE) == [v4("127.0.0.1"), v4("192.0.2.2")]
    assert parse_if_inet6(IF_INET6) == [v6("::1"), v6("fd00::2")]
    assert parse_route_gateways(ROUTE) == [v4("192.0.2.1")]
    assert parse_ipv6_route_gateways(IPV6_ROUTE) == [v6("fd00::1")]


def test_local_addresses_from_a_folder(tmp_path: Path) -> None:
    for name, text in (("fib_trie", FIB_TRIE), ("route", ROUTE), ("ipv6_route", IPV6_ROUTE)):
        (tmp_path / name).write_text(text)
    # if_inet6 missing (IPv6 disabled): the rest still counts.
    found = {str(a) for a in local_addresses(tmp_path)}
    assert found == {"127.0.0.1", "192.0.2.2", "192.0.2.1", "fd00::1"}


def test_local_addresses_of_this_host_include_loopback() -> None:
    assert ipaddress.ip_address("127.0.0.1") in local_addresses()


def test_allowlist_matches_by_overlap_and_unmaps() -> None:
    allow = Allowlist(["10.0.0.0/8", "2001:db8::/32", "::ffff:192.0.2.1"])
    net = ipaddress.ip_network
    assert allow.covers(net("10.1.2.3/32"))
    assert allow.covers(net("10.0.0.0/7"))  # a wider block would cover allowed hosts
    assert allow.covers(net("::ffff:10.1.1.1/128"))
    assert allow.covers(net("192.0.2.1/32"))
    assert allow.covers(net("2001:db8:5::/48"))
    assert not allow.covers(net("11.0.0.1/32"))
    assert not allow.covers(net("2001:db9::/32"))
    assert len(allow) == 3
