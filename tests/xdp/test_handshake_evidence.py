"""Handshake evidence in the XDP program on real veths (xdp/flow_update.h, mld_handshake).

The attack (issue 19, finding 1): SYNs sent with a forged source address made flows that
the firewall blocked, though the address never sent a packet. The program now marks a
flow MLD_F_HS_VERIFIED only when its initiator acknowledged the responder's SYN-ACK, which
a forged address never receives. Here the router r runs the program on both NICs; a real
client in a completes a connection to b (verified), while hping3 in a sends SYNs and
SYN-ACKs "from" 203.0.113.99, an address on no namespace (never verified). Before the fix
the flags did not exist (no flow was ever verified, nor told apart).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from native.structs import CONSTANTS
from tests.support import NetnsRouter, require_root_and
from tests.xdp.test_flow_monitor import TCP_CLIENT, TCP_SERVER, flows_between

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

C = CONSTANTS
FORGED = "203.0.113.99"


def test_only_a_completed_handshake_verifies_the_initiator(
    netns_router: NetnsRouter, monitors: Any
) -> None:
    require_root_and("hping3")
    t = netns_router
    mon = monitors(t.ns_r, [t.r_a, t.r_b])
    server = subprocess.Popen(
        ["ip", "netns", "exec", t.ns_b, sys.executable, "-c", TCP_SERVER, t.addr_b],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # Forged SYNs to the listening port and forged SYN-ACKs, bounded (40 packets).
        # hping3 exits 1 when no reply comes back, as none can here.
        for flags in (["-S", "-p", "8080"], ["-S", "-A", "-s", "443", "-p", "++2000"]):
            out = t.run(t.ns_a, "hping3", "-q", *flags, "-a", FORGED, "-i", "u2000", "-c",
                        "20", t.addr_b, check=False)  # fmt: skip
            assert "20 packets transmitted" in out.stdout + out.stderr, out
        t.run(t.ns_a, sys.executable, "-c", TCP_CLIENT, t.addr_b)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert mon.stop() == 0, mon.err()  # the final flush exports every flow still open
    events = mon.events()

    real = [e for e in flows_between(events, t.addr_a, t.addr_b, C["MLD_PROTO_TCP"])
            if 8080 in (e["key"]["port_lo"], e["key"]["port_hi"])]  # fmt: skip
    assert len(real) == 1
    flags = real[0]["state"]["flags"]
    assert flags & C["MLD_F_HS_VERIFIED"] and not flags & C["MLD_F_HS_CONFLICT"]
    assert flags & C["MLD_F_INIT_SYN"] and flags & C["MLD_F_SYNACK"]

    forged = flows_between(events, FORGED, t.addr_b, C["MLD_PROTO_TCP"])
    assert len(forged) >= 30, len(forged)  # the SYNs (b's SYN-ACKs join them) and SYN-ACKs
    assert not [e for e in forged if e["state"]["flags"] & C["MLD_F_HS_VERIFIED"]]
