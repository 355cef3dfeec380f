"""The same IP packets behind every supported link-layer header give the same flows."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import native
from tests.native import pcapgen as g

T0 = 1_700_000_000 * 10**9

PACKETS = [
    g.ipv4("10.1.1.1", "10.2.2.2", 6, g.tcp(1111, 443, g.SYN, window=29200)),
    g.ipv4("10.2.2.2", "10.1.1.1", 6, g.tcp(443, 1111, g.SYN | g.ACK, window=28960)),
    g.ipv4("10.1.1.1", "10.2.2.2", 17, g.udp(5353, 53, g.dns_query("example.net"))),
    g.ipv6("2001:db8::a", "2001:db8::b", 6, g.tcp(2222, 80, g.SYN)),
    g.ipv6("2001:db8::b", "2001:db8::a", 6, g.tcp(80, 2222, g.SYN | g.ACK)),
]

LINKTYPES = [
    g.LINKTYPE_RAW,
    g.LINKTYPE_LINUX_SLL,
    g.LINKTYPE_LINUX_SLL2,
    g.LINKTYPE_NULL,
    g.LINKTYPE_LOOP,
    g.LINKTYPE_PPP,
    g.LINKTYPE_PPP_HDLC,
    g.LINKTYPE_PPP_WITH_DIR,
    g.LINKTYPE_C_HDLC,
    g.LINKTYPE_PPP_ETHER,
]


def flows(path: Path) -> npt.NDArray[np.void]:
    eng = native.FlowEngine()
    batches = [*eng.feed_file(path), eng.finish()]
    out = np.concatenate(batches)
    return np.sort(out, order=["ip_version", "protocol", "port_lo"])


def write(path: Path, linktype: int, packets: list[bytes]) -> Path:
    frames = [(T0 + i * 1000, g.frame_for(linktype, p)) for i, p in enumerate(packets)]
    return g.write_pcap(path, frames, linktype)


@pytest.mark.parametrize("linktype", LINKTYPES)
def test_same_flows_as_ethernet(tmp_path: Path, linktype: int) -> None:
    expected = flows(write(tmp_path / "eth.pcap", g.LINKTYPE_ETHERNET, PACKETS))
    got = flows(write(tmp_path / f"lt{linktype}.pcap", linktype, PACKETS))
    assert len(expected) == 3
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("linktype", "packets"),
    [(g.LINKTYPE_IPV4, PACKETS[:3]), (g.LINKTYPE_IPV6, PACKETS[3:])],
)
def test_ipv4_ipv6_link_types(tmp_path: Path, linktype: int, packets: list[bytes]) -> None:
    expected = flows(write(tmp_path / "eth.pcap", g.LINKTYPE_ETHERNET, packets))
    got = flows(write(tmp_path / "ip.pcap", linktype, packets))
    assert got.tobytes() == expected.tobytes()


def test_vlan_inside_sll(tmp_path: Path) -> None:
    frame = struct.pack("!HHH8sHHH", 0, 1, 6, bytes(8), 0x8100, 12, 0x0800) + PACKETS[0]
    eng = native.FlowEngine()
    assert not list(eng.feed_file(g.write_pcap(tmp_path / "v.pcap", [(T0, frame)], 113)))
    ev = eng.finish()
    assert len(ev) == 1 and ev[0]["vlan_id"] == 12 and ev[0]["port_lo"] == 1111
