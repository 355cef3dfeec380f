"""The reverse-path check in the XDP program (MLD_RPF, sniffer.capture.reverse_path_check).

The attack (issue 19): on a gateway, packets arrive on the outside NIC with a source
address of the inside network, or of no network the gateway can route to. Such a source is
forged: the firewall never blocks an inside address (auto_allowlist ``connected``), and a
forged one of no network costs nothing to rotate, so the packets reach the inside hosts.
Here the router r runs the program on both NICs and hping3 in a sends ICMP echo requests
to b "from" 198.51.100.77 (b's own network, on the other side of r) and "from"
203.0.113.99 (no route on r). With the check off (``none``: the program before this
change) they reach b, which the test shows first; with ``strict`` r's XDP drops them and
counts them as rpf_dropped, while real traffic both ways, IPv4 and IPv6, still flows.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import NetnsRouter, require_root_and, wait_for
from tests.xdp.test_flow_monitor import flows_between

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

INSIDE_FORGED = "198.51.100.77"  # b's network, sent from a's side
NOWHERE_FORGED = "203.0.113.99"  # no route on r
COUNT = 20


def _echoes_received(t: NetnsRouter) -> int:
    """ICMP echo requests b's kernel received (Icmp InEchos of its /proc/net/snmp)."""
    lines = [x.split() for x in t.run(t.ns_b, "cat", "/proc/net/snmp").stdout.splitlines()]
    head, values = [x for x in lines if x and x[0] == "Icmp:"][:2]
    return int(values[head.index("InEchos")])


def _forge(t: NetnsRouter, source: str) -> None:
    # hping3 exits 1 when no reply comes back, as none can to a forged source.
    out = t.run(t.ns_a, "hping3", "-q", "-1", "-a", source, "-i", "u2000", "-c", str(COUNT),
                t.addr_b, check=False)  # fmt: skip
    assert f"{COUNT} packets transmitted" in out.stdout + out.stderr, out


def test_strict_reverse_path_drops_forged_sources_and_passes_real_traffic(
    netns_router: NetnsRouter, monitors: Any
) -> None:
    require_root_and("hping3", "ping")
    t = netns_router

    # Without the check the forged echoes are forwarded to b: the attack works.
    mon = monitors(t.ns_r, [t.r_a, t.r_b], reverse_path_check="none")
    before = _echoes_received(t)
    _forge(t, INSIDE_FORGED)
    wait_for(lambda: _echoes_received(t) >= before + COUNT, 10, "the forged echoes at b")
    assert mon.stop() == 0, mon.err()
    assert mon.stats()["rpf_dropped"] == 0

    mon = monitors(t.ns_r, [t.r_a, t.r_b], reverse_path_check="strict")
    before = _echoes_received(t)
    for source in (INSIDE_FORGED, NOWHERE_FORGED):
        _forge(t, source)
    wait_for(lambda: mon.fresh_stats()["rpf_dropped"] >= 2 * COUNT, 10, "forged packets dropped")
    assert _echoes_received(t) == before, "a forged echo got through to b"
    # Real traffic both ways and in both families is untouched: every echo answered.
    for ns, dst in ((t.ns_a, t.addr_b), (t.ns_b, t.addr_a), (t.ns_a, t.addr6_b)):
        out = t.run(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
        assert " 0% packet loss" in out.stdout, out
    assert mon.stop() == 0, mon.err()
    stats = mon.stats()
    assert stats["rpf_dropped"] == 2 * COUNT, stats
    events = mon.events()
    for source in (INSIDE_FORGED, NOWHERE_FORGED):
        assert not flows_between(events, source, t.addr_b, 1), source
    assert flows_between(events, t.addr_a, t.addr_b, 1)
