"""The lab's declarative description: the default loads, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.errors import LabError
from lab.topology import load_topology


def test_default_topology_has_the_required_roles() -> None:
    topo = load_topology()
    assert {"attacker", "client", "gateway", "server"} <= set(topo.hosts)
    gw = topo.host("gateway")
    assert gw.forward and {n.name for n in gw.nics} == {"outside", "inside"}
    assert {n.segment for n in gw.nics} == {"outside", "inside"}
    assert {"http", "ssh", "dns"} <= set(topo.host("server").services)
    # Every routed host reaches the gateway on its own segment.
    assert topo.gateway_address(topo.host("client")) == "203.0.113.1"
    assert topo.gateway_address(topo.host("server")) == "10.10.0.1"
    assert len(topo.inside_hosts()) == 65
    assert all(ns.startswith("mld-lab-") for ns in topo.namespaces())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return path


BASE = """\
prefix: t
segments:
  a: {ipv4: 192.0.2.0/24}
hosts:
  h:
    nics: {eth0: {segment: a, ipv4: 192.0.2.5}}
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("ipv4: 192.0.2.5", "ipv4: 198.51.100.5"), "outside segment a"),
        (("segment: a,", "segment: b,"), "no segment 'b'"),
        (("  h:\n", "  h:\n    colour: red\n"), "unknown key(s) colour"),
        (("  h:\n", "  h:\n    route_via: nowhere\n"), "no host 'nowhere'"),
        (("  h:\n", "  h:\n    services: [telnet]\n"), "unknown service 'telnet'"),
        (("eth0:", "a-very-long-interface-name:"), "at most 15 characters"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = _write(tmp_path, BASE.replace(*change))
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_topology(path)


def test_an_address_used_twice_is_refused(tmp_path: Path) -> None:
    text = BASE + "  g:\n    nics: {eth0: {segment: a, ipv4: 192.0.2.5}}\n"
    with pytest.raises(LabError, match=r"192\.0\.2\.5 is used by"):
        load_topology(_write(tmp_path, text))


def test_not_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not valid YAML"):
        load_topology(_write(tmp_path, "hosts: [unclosed"))
