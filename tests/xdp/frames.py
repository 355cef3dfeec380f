"""Hand-made frames for the parser attack tests, and a sender that puts them on a veth.

scapy is not installed; these builders give exact bytes with valid IPv4 header and ICMPv6
checksums, so the receiving kernel treats the packets as it would a real sender's. The
frames go out through an AF_PACKET socket inside the sender's namespace (``send``), which
bypasses the sender's own IP stack: forged sources, fragments and extension-header chains
leave exactly as built.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys

from tests.support import NetnsPair

PROTO_TCP, PROTO_ICMPV6, DEST_OPTS = 6, 58, 60

SENDER = """
import socket, sys
dev, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
n = 0
for line in open(path):
    if line.strip():
        n += s.send(bytes.fromhex(line.strip())) > 0
print(n, flush=True)
"""


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(ns: str, dev: str) -> bytes:
    info = json.loads(subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", dev],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout)  # fmt: skip
    return bytes.fromhex(info[0]["address"].replace(":", ""))


def ether(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4_fragment(
    src: str, dst: str, proto: int, ident: int, offset8: int, more: bool, data: bytes
) -> bytes:
    """An IPv4 fragment: ``data`` placed at ``offset8`` * 8 bytes of the datagram."""
    flags = (0x2000 if more else 0) | offset8
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, flags, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + data


def tcp_syn(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 1024, 0, 0)


def icmpv6_echo_with_dest_opts(src: str, dst: str, n_ext: int, ident: int, seq: int) -> bytes:
    """An ICMPv6 echo request behind ``n_ext`` 8-byte destination-options headers (PadN)."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    body = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"mld-parse-test"
    pseudo = s + d + struct.pack("!I3xB", len(body), PROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    chain = b""
    for i in range(n_ext):
        nxt = DEST_OPTS if i < n_ext - 1 else PROTO_ICMPV6
        chain += struct.pack("!BBBB4x", nxt, 0, 1, 4)  # PadN option filling the header
    first = DEST_OPTS if n_ext else PROTO_ICMPV6
    payload = chain + body
    return struct.pack("!IHBB", 6 << 28, len(payload), first, 64) + s + d + payload


def send(pair: NetnsPair, frames: list[bytes], tmp: str) -> int:
    """Send ``frames`` from the pair's ``a`` end; returns how many the socket accepted."""
    with open(tmp, "w") as f:
        f.write("\n".join(fr.hex() for fr in frames) + "\n")
    out = pair.run(pair.ns_a, sys.executable, "-c", SENDER, pair.dev_a, tmp).stdout
    return int(out.strip())


def ipv4(src: str, dst: str, proto: int, data: bytes, *, total: int = 0) -> bytes:
    """An unfragmented IPv4 packet; ``total`` overrides the header's total length."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total or 20 + len(data), 1, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + data


def snmp6(pair: NetnsPair, ns: str, name: str) -> int:
    """A counter of /proc/net/snmp6 in namespace ``ns`` (what its IPv6 stack received)."""
    for line in pair.run(ns, "cat", "/proc/net/snmp6").stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value.strip())
    raise KeyError(name)
