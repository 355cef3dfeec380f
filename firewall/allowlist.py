"""What the firewall never blocks: configured networks plus the host's own addresses.

``Allowlist`` matches a candidate block (a network) against the allowed networks by
overlap, so a /24 block that would cover the gateway is refused as surely as the
gateway's own /32. IPv4-mapped IPv6 (``::ffff:10.0.0.1``) is treated as IPv4 on both
sides. ``local_addresses()`` reads the host's addresses and gateways from /proc/net
(no psutil, no ``ip`` binary), through small parsers that tests feed with text::

    >>> allow = Allowlist(["10.0.0.0/8", *local_addresses()])
    >>> allow.covers(ipaddress.ip_network("10.1.2.3/32"))
    True
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from base.errors import ConfigError

__all__ = [
    "Allowlist",
    "IPAddress",
    "IPNetwork",
    "local_addresses",
    "parse_fib_trie",
    "parse_if_inet6",
    "parse_ipv6_route_gateways",
    "parse_route_gateways",
    "unmap",
    "unmap_network",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROC_NET = Path("/proc/net")
_RTF_GATEWAY = 0x2


def unmap(addr: IPAddress) -> IPAddress:
    """``addr`` as IPv4 when it is IPv4-mapped IPv6 (``::ffff:a.b.c.d``), else itself."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def unmap_network(net: IPNetwork) -> IPNetwork:
    """``net`` as an IPv4 network when it lies inside ``::ffff:0:0/96``, else itself."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96), strict=False)
    return net


class Allowlist:
    """Networks that are never blocked, matched by overlap."""

    def __init__(self, networks: Iterable[str | IPAddress | IPNetwork] = ()) -> None:
        self._v4: list[ipaddress.IPv4Network] = []
        self._v6: list[ipaddress.IPv6Network] = []
        for entry in networks:
            self.add(entry)

    def add(self, entry: str | IPAddress | IPNetwork) -> None:
        """Allow one address or network ("192.0.2.1", "10.0.0.0/8", "::ffff:10.0.0.1")."""
        try:
            net = unmap_network(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"firewall.allowlist: {str(entry)!r} is not an IP address or network "
                "(write it as 192.0.2.0/24 or 2001:db8::/32)"
            ) from exc
        if isinstance(net, ipaddress.IPv4Network):
            if net not in self._v4:
                self._v4.append(net)
        elif net not in self._v6:
            self._v6.append(net)

    def covers(self, net: IPNetwork) -> bool:
        """True when ``net`` overlaps an allowed network (either contains the other)."""
        net = unmap_network(net)
        if isinstance(net, ipaddress.IPv4Network):
            return any(net.overlaps(allowed) for allowed in self._v4)
        return any(net.overlaps(allowed) for allowed in self._v6)

    def networks(self) -> list[IPNetwork]:
        """The allowed networks, IPv4 first."""
        return [*self._v4, *self._v6]

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)


def parse_fib_trie(text: str) -> list[ipaddress.IPv4Address]:
    """The host's own IPv4 addresses: the ``/32 host LOCAL`` leaves of /proc/net/fib_trie."""
    found: list[ipaddress.IPv4Address] = []
    last = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:].strip()
        elif stripped.startswith("/32 host LOCAL") and last:
            addr = ipaddress.IPv4Address(last)
            if addr not in found:
                found.append(addr)
    return found


def parse_if_inet6(text: str) -> list[ipaddress.IPv6Address]:
    """The host's own IPv6 addresses from /proc/net/if_inet6 (32 hex digits per line)."""
    found: list[ipaddress.IPv6Address] = []
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            addr = ipaddress.IPv6Address(int(fields[0], 16))
            if addr not in found:
                found.append(addr)
    return found


def parse_route_gateways(text: str) -> list[ipaddress.IPv4Address]:
    """IPv4 gateways from /proc/net/route (little-endian hex, RTF_GATEWAY routes)."""
    found: list[ipaddress.IPv4Address] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or not int(fields[3], 16) & _RTF_GATEWAY:
            continue
        addr = ipaddress.IPv4Address(int(fields[2], 16).to_bytes(4, "little"))
        if not addr.is_unspecified and addr not in found:
            found.append(addr)
    return found


def parse_ipv6_route_gateways(text: str) -> list[ipaddress.IPv6Address]:
    """IPv6 next hops from /proc/net/ipv6_route (the fifth field, when not ::)."""
    found: list[ipaddress.IPv6Address] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or len(fields[4]) != 32:
            continue
        addr = ipaddress.IPv6Address(int(fields[4], 16))
        if not addr.is_unspecified and addr not in found:
            found.append(addr)
    return found


def local_addresses(proc_net: Path = PROC_NET) -> list[IPAddress]:
    """The host's own addresses and its gateways, read from ``proc_net``.

    A file that is missing or unreadable (no IPv6, a container without /proc/net) gives
    nothing; the configured allowlist still applies.
    """
    parsers = (
        ("fib_trie", parse_fib_trie),
        ("if_inet6", parse_if_inet6),
        ("route", parse_route_gateways),
        ("ipv6_route", parse_ipv6_route_gateways),
    )
    found: list[IPAddress] = []
    for name, parse in parsers:
        try:
            text = (proc_net / name).read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        for addr in parse(text):
            if addr not in found:
                found.append(addr)
    return found
