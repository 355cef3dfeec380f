"""What the firewall never blocks: configured networks plus what the host depends on.

``Allowlist`` matches a candidate block (a network) against the allowed networks by
overlap, so a /24 block that would cover the gateway is refused as surely as the
gateway's own /32. IPv4-mapped IPv6 (``::ffff:10.0.0.1``) is treated as IPv4 on both
sides. ``local_addresses()`` reads the host's addresses and gateways from /proc/net
(no psutil, no ``ip`` binary), through small parsers that tests feed with text::

    >>> allow = Allowlist(["10.0.0.0/8", *local_addresses()])
    >>> allow.covers(ipaddress.ip_network("10.1.2.3/32"))
    True

``automatic_allowlist(sources)`` gathers what the agent adds by itself, because an attacker
who forges those sources must not get them blocked (issue: a flood "from" 8.8.8.8 blocked
the upstream resolver): the host's own addresses, its gateways, its connected subnets,
its DNS resolvers (/etc/resolv.conf) and its NTP servers (chrony, ntpd and
systemd-timesyncd configuration; only addresses written as such: names are not resolved,
since what a name resolves to changes, and are reported so the operator can add them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from base.errors import ConfigError

__all__ = [
    "AUTO_ALLOWLIST_SOURCES",
    "Allowlist",
    "AutomaticAllowlist",
    "IPAddress",
    "IPNetwork",
    "automatic_allowlist",
    "local_addresses",
    "parse_connected_ipv6",
    "parse_connected_routes",
    "parse_fib_trie",
    "parse_if_inet6",
    "parse_ipv6_route_gateways",
    "parse_ntp_servers",
    "parse_resolv_conf",
    "parse_route_gateways",
    "unmap",
    "unmap_network",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROC_NET = Path("/proc/net")
_RTF_GATEWAY = 0x2
RESOLV_CONF = Path("/etc/resolv.conf")
# Where NTP clients keep their servers (chrony, ntpd/ntpsec, systemd-timesyncd).
NTP_CONFIGS = (
    Path("/etc/chrony/chrony.conf"),
    Path("/etc/chrony.conf"),
    Path("/etc/ntp.conf"),
    Path("/etc/ntpsec/ntp.conf"),
    Path("/etc/systemd/timesyncd.conf"),
)
AutoSource = Literal["own_addresses", "gateways", "connected", "resolvers", "ntp"]
# Every source automatic_allowlist() knows, in the order it reads them.
AUTO_ALLOWLIST_SOURCES: tuple[AutoSource, ...] = (
    "own_addresses",
    "gateways",
    "connected",
    "resolvers",
    "ntp",
)


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


def parse_connected_routes(text: str) -> list[ipaddress.IPv4Network]:
    """Directly connected IPv4 subnets from /proc/net/route: routes without a gateway and
    with a mask (the default route and host routes of a gateway are not subnets)."""
    found: list[ipaddress.IPv4Network] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or int(fields[3], 16) & _RTF_GATEWAY:
            continue
        dest = int(fields[1], 16).to_bytes(4, "little")
        mask = int(fields[7], 16).to_bytes(4, "little")
        prefix = bin(int.from_bytes(mask, "big")).count("1")
        if prefix == 0:
            continue
        net = ipaddress.IPv4Network((dest, prefix), strict=False)
        if net not in found:
            found.append(net)
    return found


def parse_connected_ipv6(text: str) -> list[ipaddress.IPv6Network]:
    """Directly connected IPv6 subnets from /proc/net/ipv6_route: routes with no next hop
    and a prefix length between 1 and 127, leaving out multicast and the host's own
    addresses (/128 local routes)."""
    found: list[ipaddress.IPv6Network] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or len(fields[0]) != 32 or len(fields[4]) != 32:
            continue
        prefix = int(fields[1], 16)
        if not 0 < prefix < 128 or int(fields[4], 16) != 0:
            continue
        net = ipaddress.IPv6Network((int(fields[0], 16), prefix), strict=False)
        if net.is_multicast or net in found:
            continue
        found.append(net)
    return found


def _address(text: str) -> IPAddress | None:
    try:
        return unmap(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def parse_resolv_conf(text: str) -> list[IPAddress]:
    """The ``nameserver`` addresses of a resolv.conf."""
    found: list[IPAddress] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            addr = _address(fields[1])
            if addr is not None and addr not in found:
                found.append(addr)
    return found


def parse_ntp_servers(text: str) -> tuple[list[IPAddress], list[str]]:
    """NTP servers of a chrony, ntpd or timesyncd configuration: the addresses, and the
    names that are not addresses (``server``/``pool``/``peer`` lines; ``NTP=`` and
    ``FallbackNTP=`` of timesyncd)."""
    addrs: list[IPAddress] = []
    names: list[str] = []
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith(("NTP=", "FallbackNTP=")):
            values = stripped.split("=", 1)[1].split()
        else:
            fields = stripped.split()
            values = (
                fields[1:2] if len(fields) >= 2 and fields[0] in ("server", "pool", "peer") else []
            )
        for value in values:
            addr = _address(value)
            if addr is not None:
                if addr not in addrs:
                    addrs.append(addr)
            elif value not in names:
                names.append(value)
    return addrs, names


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@dataclass
class AutomaticAllowlist:
    """What :func:`automatic_allowlist` found: per source, the networks; and the NTP server
    names it could not add (written as names, not addresses)."""

    found: dict[str, list[IPNetwork]] = field(default_factory=dict)
    unresolved_ntp: list[str] = field(default_factory=list)

    def networks(self) -> list[IPNetwork]:
        """Every network found, once, in source order."""
        out: list[IPNetwork] = []
        for nets in self.found.values():
            out.extend(n for n in nets if n not in out)
        return out

    def describe(self) -> str:
        """One line for the log: each source with what it added."""
        parts = [
            f"{source} {', '.join(str(n) for n in nets) or '(none)'}"
            for source, nets in self.found.items()
        ]
        return "; ".join(parts) or "(no automatic entries)"


def automatic_allowlist(
    sources: Iterable[str] = AUTO_ALLOWLIST_SOURCES,
    *,
    proc_net: Path = PROC_NET,
    resolv_conf: Path = RESOLV_CONF,
    ntp_configs: Iterable[Path] = NTP_CONFIGS,
) -> AutomaticAllowlist:
    """The networks this host depends on, from the chosen ``sources`` (see
    :data:`AUTO_ALLOWLIST_SOURCES`). Missing files give nothing for their source."""
    wanted = set(sources)
    unknown = wanted - set(AUTO_ALLOWLIST_SOURCES)
    if unknown:
        raise ConfigError(
            f"firewall.auto_allowlist: unknown source(s) {sorted(unknown)}; "
            f"choose from {', '.join(AUTO_ALLOWLIST_SOURCES)}"
        )
    result = AutomaticAllowlist()

    def host(addrs: Iterable[IPAddress]) -> list[IPNetwork]:
        return [ipaddress.ip_network(a) for a in addrs]

    def proc(name: str) -> str:
        return _read(proc_net / name)

    if "own_addresses" in wanted:
        own: list[IPAddress] = [
            *parse_fib_trie(proc("fib_trie")),
            *parse_if_inet6(proc("if_inet6")),
        ]
        result.found["own_addresses"] = host(own)
    if "gateways" in wanted:
        gateways: list[IPAddress] = [
            *parse_route_gateways(proc("route")),
            *parse_ipv6_route_gateways(proc("ipv6_route")),
        ]
        result.found["gateways"] = host(gateways)
    if "connected" in wanted:
        result.found["connected"] = [
            *parse_connected_routes(proc("route")),
            *parse_connected_ipv6(proc("ipv6_route")),
        ]
    if "resolvers" in wanted:
        result.found["resolvers"] = host(parse_resolv_conf(_read(resolv_conf)))
    if "ntp" in wanted:
        servers: list[IPAddress] = []
        for path in ntp_configs:
            addrs, names = parse_ntp_servers(_read(path))
            servers.extend(a for a in addrs if a not in servers)
            result.unresolved_ntp.extend(n for n in names if n not in result.unresolved_ntp)
        result.found["ntp"] = host(servers)
    return result
