"""Host names the operator uses in questions ("from the workstation"), with addresses.

Three sources, in this order of precedence:

* ``rag.host_names`` in mld.yaml (``{workstation: 10.0.2.20}``), always used;
* ``/etc/hosts`` (names of at least 3 characters; ``localhost`` and the ``ip6-`` names
  are left out), always used;
* the lab's hosts (lab/topology.yaml: attacker, client, workstation, victim, server,
  gateway), passed in by the command line. Those are everyday words too ("the server"),
  so a lab name is read as a host only when the store holds events of its address.

``HostNames.find(text, seen)`` gives the names found in a question, longest first, with
their addresses; rag/question.py puts the addresses in the name's place.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from base.errors import ConfigError

__all__ = ["Host", "HostNames", "read_etc_hosts"]

_SKIP = re.compile(r"^(localhost|ip6-\w+|.*\.localdomain)$")


@dataclass(frozen=True)
class Host:
    name: str
    addresses: tuple[str, ...]
    source: str  # "config", "/etc/hosts", "lab"

    @property
    def weak(self) -> bool:
        """A lab name: a host only where the store has seen one of its addresses."""
        return self.source == "lab"


def read_etc_hosts(path: Path = Path("/etc/hosts")) -> dict[str, list[str]]:
    """Name -> addresses of a hosts file (missing or unreadable: nothing)."""
    out: dict[str, list[str]] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            addr = str(ipaddress.ip_address(words[0]))
        except ValueError:
            continue
        for name in words[1:]:
            name = name.lower()
            if len(name) >= 3 and not _SKIP.match(name):
                out.setdefault(name, []).append(addr)
    return out


class HostNames:
    """Names to addresses, from config, /etc/hosts and the lab (see the module doc)."""

    def __init__(
        self,
        configured: Mapping[str, str] | None = None,
        etc_hosts: Mapping[str, Iterable[str]] | None = None,
        lab: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.hosts: dict[str, Host] = {}
        for source, names in (("lab", lab), ("/etc/hosts", etc_hosts)):
            for name, addrs in (names or {}).items():
                self.hosts[name.lower()] = Host(name.lower(), tuple(addrs), source)
        for name, addr in (configured or {}).items():
            try:
                addrs = tuple(str(ipaddress.ip_address(a.strip())) for a in str(addr).split(","))
            except ValueError as exc:
                raise ConfigError(
                    f"rag.host_names.{name} is {addr!r}: write an IP address (or several, "
                    "separated by commas)"
                ) from exc
            self.hosts[name.lower()] = Host(name.lower(), addrs, "config")
        longest = sorted(self.hosts, key=len, reverse=True)
        self._pattern = (
            re.compile(r"\b(?:the\s+)?(" + "|".join(map(re.escape, longest)) + r")\b", re.I)
            if longest
            else None
        )

    def find(
        self, text: str, seen: Callable[[str], bool] | None = None
    ) -> list[tuple[int, int, Host]]:
        """(start, end, host) of each host name in ``text`` (with a leading "the")."""
        if self._pattern is None:
            return []
        out = []
        for m in self._pattern.finditer(text):
            host = self.hosts[m.group(1).lower()]
            if host.weak and (seen is None or not any(seen(a) for a in host.addresses)):
                continue
            out.append((m.start(), m.end(), host))
        return out
