"""The lab's declarative description (``lab/topology.yaml``) as typed, validated objects.

Nothing here touches the system: ``lifecycle.py`` builds what this describes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from base.errors import LabError

__all__ = ["DEFAULT_TOPOLOGY", "Host", "Nic", "Segment", "Topology", "load_topology"]

DEFAULT_TOPOLOGY = Path(__file__).with_name("topology.yaml")
SERVICES = ("http", "ssh", "dns", "tunnel_dns", "smb", "ftp")
# Linux interface names hold at most 15 characters.
_IFNAMSIZ = 15


@dataclass(frozen=True)
class Segment:
    name: str
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network | None


@dataclass(frozen=True)
class Nic:
    name: str
    segment: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address | None
    extra_ipv4: tuple[ipaddress.IPv4Address, ...] = ()

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        extra: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = list(self.extra_ipv4)
        return [self.ipv4, *extra, *([self.ipv6] if self.ipv6 else [])]


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    nics: tuple[Nic, ...]
    forward: bool = False
    route_via: str | None = None
    services: tuple[str, ...] = ()

    @property
    def ipv4(self) -> str:
        """The host's first IPv4 address (the one recipes mean by the host's name)."""
        return str(self.nics[0].ipv4)

    @property
    def ipv6(self) -> str | None:
        return str(self.nics[0].ipv6) if self.nics[0].ipv6 else None

    def nic(self, name: str) -> Nic:
        for nic in self.nics:
            if nic.name == name:
                return nic
        raise LabError(f"host {self.name} has no NIC {name!r}")


@dataclass(frozen=True)
class Topology:
    prefix: str
    segments: dict[str, Segment]
    hosts: dict[str, Host]
    source: Path = field(default=DEFAULT_TOPOLOGY)

    def namespace(self, host: str) -> str:
        if host not in self.hosts:
            raise LabError(f"no host {host!r} in {self.source} (hosts: {', '.join(self.hosts)})")
        return f"{self.prefix}-{host}"

    def switch_namespace(self, segment: str) -> str:
        return f"{self.prefix}-sw-{segment}"

    def namespaces(self) -> list[str]:
        """Every namespace the lab creates: switches first (hosts plug into them)."""
        return [self.switch_namespace(s) for s in self.segments] + [
            self.namespace(h) for h in self.hosts
        ]

    def host(self, name: str) -> Host:
        self.namespace(name)
        return self.hosts[name]

    def gateway_address(self, host: Host, family: int = 4) -> str | None:
        """The address of ``host.route_via`` on the segment of the host's first NIC."""
        if host.route_via is None:
            return None
        segment = host.nics[0].segment
        for nic in self.hosts[host.route_via].nics:
            if nic.segment == segment:
                addr = nic.ipv4 if family == 4 else nic.ipv6
                return str(addr) if addr else None
        raise LabError(f"{host.route_via} has no NIC on segment {segment} to route {host.name}")

    def inside_hosts(self) -> list[str]:
        """Addresses that stand for inside hosts (the server and its extra addresses)."""
        out: list[str] = []
        for host in self.hosts.values():
            if "http" in host.services or host.nics[0].extra_ipv4:
                for nic in host.nics:
                    out.append(str(nic.ipv4))
                    out.extend(str(a) for a in nic.extra_ipv4)
        return out


def _need(mapping: dict[str, Any], key: str, where: str, source: Path) -> Any:
    if key not in mapping:
        raise LabError(f"{source}: {where} needs '{key}'")
    return mapping[key]


def _check_keys(mapping: dict[str, Any], allowed: set[str], where: str, source: Path) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise LabError(
            f"{source}: unknown key(s) {', '.join(unknown)} in {where} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _address_range(text: str, where: str, source: Path) -> tuple[ipaddress.IPv4Address, ...]:
    first, _, last = str(text).partition("-")
    try:
        lo = ipaddress.IPv4Address(first.strip())
        hi = ipaddress.IPv4Address(last.strip()) if last else lo
    except ValueError as exc:
        raise LabError(f"{source}: {where}: {exc}") from exc
    if hi < lo or int(hi) - int(lo) > 1024:
        raise LabError(f"{source}: {where}: range {text!r} is reversed or over 1024 addresses")
    return tuple(ipaddress.IPv4Address(i) for i in range(int(lo), int(hi) + 1))


def _parse_nic(
    name: str, raw: dict[str, Any], host: str, segs: dict[str, Segment], src: Path
) -> Nic:
    where = f"hosts.{host}.nics.{name}"
    _check_keys(raw, {"segment", "ipv4", "ipv6", "extra_ipv4"}, where, src)
    if len(name) > _IFNAMSIZ:
        raise LabError(f"{src}: {where}: interface names hold at most {_IFNAMSIZ} characters")
    segment = _need(raw, "segment", where, src)
    if segment not in segs:
        raise LabError(f"{src}: {where}: no segment {segment!r} (segments: {', '.join(segs)})")
    try:
        ipv4 = ipaddress.IPv4Address(_need(raw, "ipv4", where, src))
        ipv6 = ipaddress.IPv6Address(raw["ipv6"]) if raw.get("ipv6") else None
    except ValueError as exc:
        raise LabError(f"{src}: {where}: {exc}") from exc
    seg = segs[segment]
    if ipv4 not in seg.ipv4:
        raise LabError(f"{src}: {where}: {ipv4} is outside segment {segment} ({seg.ipv4})")
    if ipv6 is not None and (seg.ipv6 is None or ipv6 not in seg.ipv6):
        raise LabError(f"{src}: {where}: {ipv6} is outside segment {segment} ({seg.ipv6})")
    extra = _address_range(raw["extra_ipv4"], where, src) if raw.get("extra_ipv4") else ()
    for addr in extra:
        if addr not in seg.ipv4:
            raise LabError(f"{src}: {where}: extra address {addr} is outside {seg.ipv4}")
    return Nic(name=name, segment=segment, ipv4=ipv4, ipv6=ipv6, extra_ipv4=extra)


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (default: ``lab/topology.yaml``)."""
    src = Path(path) if path else DEFAULT_TOPOLOGY
    try:
        raw = yaml.safe_load(src.read_text())
    except OSError as exc:
        raise LabError(f"cannot read topology {src}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise LabError(f"{src} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise LabError(f"{src}: expected a mapping at the top")
    _check_keys(raw, {"prefix", "segments", "hosts"}, "the top level", src)
    prefix = str(raw.get("prefix", "mld-lab"))
    segs: dict[str, Segment] = {}
    for name, seg in (_need(raw, "segments", "the top level", src) or {}).items():
        _check_keys(seg, {"ipv4", "ipv6"}, f"segments.{name}", src)
        try:
            segs[name] = Segment(
                name=name,
                ipv4=ipaddress.IPv4Network(_need(seg, "ipv4", f"segments.{name}", src)),
                ipv6=ipaddress.IPv6Network(seg["ipv6"]) if seg.get("ipv6") else None,
            )
        except ValueError as exc:
            raise LabError(f"{src}: segments.{name}: {exc}") from exc
    hosts: dict[str, Host] = {}
    seen: dict[str, str] = {}
    for name, h in (_need(raw, "hosts", "the top level", src) or {}).items():
        where = f"hosts.{name}"
        _check_keys(h, {"role", "forward", "route_via", "nics", "services"}, where, src)
        nics = tuple(
            _parse_nic(nic, spec, name, segs, src)
            for nic, spec in (_need(h, "nics", where, src) or {}).items()
        )
        if not nics:
            raise LabError(f"{src}: {where} has no NICs")
        for nic in nics:
            for addr in (nic.ipv4, nic.ipv6, *nic.extra_ipv4):
                if addr is not None and str(addr) in seen:
                    raise LabError(f"{src}: {addr} is used by {seen[str(addr)]} and {where}")
                if addr is not None:
                    seen[str(addr)] = where
        services = tuple(h.get("services") or ())
        for s in services:
            if s not in SERVICES:
                raise LabError(f"{src}: {where}: unknown service {s!r} ({', '.join(SERVICES)})")
        hosts[name] = Host(
            name=name,
            role=str(h.get("role", "")),
            nics=nics,
            forward=bool(h.get("forward", False)),
            route_via=h.get("route_via"),
            services=services,
        )
    for host in hosts.values():
        if host.route_via is not None and host.route_via not in hosts:
            raise LabError(f"{src}: hosts.{host.name}.route_via: no host {host.route_via!r}")
    topo = Topology(prefix=prefix, segments=segs, hosts=hosts, source=src)
    for host in hosts.values():
        topo.gateway_address(host)
    return topo
