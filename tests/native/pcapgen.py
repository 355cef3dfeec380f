"""A tiny packet builder and pcap writer for native/ tests: exact bytes, chosen timestamps."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from pathlib import Path

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51
LINKTYPE_RAW = 101
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IEEE802_11 = 105
LINKTYPE_PPP_WITH_DIR = 204
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def write_pcap(
    path: Path, packets: Iterable[tuple[int, bytes]], linktype: int = LINKTYPE_ETHERNET
) -> Path:
    """Write (timestamp ns, frame) records as a nanosecond pcap; returns path."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype))
    for ts_ns, frame in packets:
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        out += struct.pack("<IIII", sec, nsec, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))
    return path


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    """payload starts with any extension headers the caller chained (next_header = first)."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def ext_header(next_header: int, body6: bytes = bytes(6)) -> bytes:
    """An 8-byte hop-by-hop / destination-options style extension header."""
    return struct.pack("!BB", next_header, 0) + body6


def tcp(
    sport: int,
    dport: int,
    flags: int,
    window: int = 1024,
    payload: bytes = b"",
    *,
    seq: int = 1,
    ack: int = 0,
) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(type_: int, code: int, payload: bytes = bytes(4)) -> bytes:
    return struct.pack("!BBH", type_, code, 0) + payload


def dns_query(name: str, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def qname_wire(name: str) -> bytes:
    return b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"


def eth(ip_packet: bytes, *, vlans: tuple[int, ...] = (), ethertype: int | None = None) -> bytes:
    if ethertype is None:
        ethertype = 0x86DD if ip_packet[:1] and ip_packet[0] >> 4 == 6 else 0x0800
    hdr = bytes.fromhex("020000000002020000000001")
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if i == 0 and len(vlans) > 1 else 0x8100
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype) + ip_packet


def ethertype_of(ip_packet: bytes) -> int:
    return 0x86DD if ip_packet[0] >> 4 == 6 else 0x0800


def frame_for(linktype: int, ip_packet: bytes) -> bytes:
    """The same IP packet behind each supported link-layer header."""
    v6 = ip_packet[0] >> 4 == 6
    etype = ethertype_of(ip_packet)
    ppp_proto = struct.pack("!H", 0x0057 if v6 else 0x0021)
    if linktype == LINKTYPE_ETHERNET:
        return eth(ip_packet)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return ip_packet
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, bytes(8), etype) + ip_packet
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", etype, 0, 2, 1, 0, 6, bytes(8)) + ip_packet
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 30 if v6 else 2) + ip_packet
    if linktype == LINKTYPE_LOOP:
        return struct.pack(">I", 24 if v6 else 2) + ip_packet
    if linktype == LINKTYPE_PPP:
        return ppp_proto + ip_packet
    if linktype == LINKTYPE_PPP_HDLC:
        return b"\xff\x03" + ppp_proto + ip_packet
    if linktype == LINKTYPE_PPP_WITH_DIR:
        return b"\x00\xff\x03" + ppp_proto + ip_packet
    if linktype == LINKTYPE_C_HDLC:
        return struct.pack("!BBH", 0x0F, 0, etype) + ip_packet
    if linktype == LINKTYPE_PPP_ETHER:
        return struct.pack("!BBHH", 0x11, 0, 1, len(ip_packet) + 2) + ppp_proto + ip_packet
    raise ValueError(f"no frame builder for link type {linktype}")
