"""Build the offline benchmark's capture: >= 1M packets of real traffic, in distinct flows.

The sources are the Ethernet captures in ../shared/data/pcaps: the nDPI protocol captures
(ndpi/) and the attack captures (attacks/), classic pcap and pcapng, read here with a small
pure-Python reader (no dependency). Captures of other link types (raw IP, SLL, null, ...)
and pcapng packets from non-Ethernet interfaces are skipped. Every packet is kept as it was
captured (VLAN tags, fragments, tunnels, truncated and odd frames included), except:

- Time: the files are replayed one after another, each packet keeping its gap to the
  previous packet of its file, capped at --max-gap-s (several captures span hours or days
  of idle time) and never negative, with 1 ms between files. Output timestamps therefore
  increase monotonically.
- Addresses: the set of files is replayed in rounds until --packets packets are written.
  In round r, the first 16-bit word of every IPv4 address (a.b of a.b.c.d) and the second
  16-bit word of every IPv6 address (db8 of 2001:db8::) is increased by r (mod 2^16),
  source and destination alike, so both directions of a conversation still match and each
  round's flows are new flows rather than a continuation of the previous round's.
- Checksums: the IPv4 header checksum and the TCP/UDP/ICMPv6 checksum are updated
  incrementally for the changed words (RFC 1624), so they stay valid where they were valid
  (a UDP checksum of 0, "none", stays 0; a checksum field that was not captured is left).
  Only the outer IP header of tunnelled traffic is shifted.

The output is a classic little-endian microsecond pcap (link type Ethernet), the format
every peer reads. A JSON file beside it records the parameters and the sources; a second
run with the same parameters and unchanged sources does nothing.

    .venv/bin/python bench/make_capture.py                       # build/bench/mixed-1m.pcap
    .venv/bin/python bench/make_capture.py --packets 50000 --out build/bench/mixed-50k.pcap

Last line: ``packets=N flows=N rounds=N files=N`` (flows = distinct bidirectional 5-tuples,
"flow-ish": timeouts and TCP closes split some of them into several flow records).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for bench.common
from bench.common import shared_data

REPO = Path(__file__).resolve().parent.parent
DATA = (shared_data() / "pcaps").resolve()
SOURCE_DIRS = ("ndpi", "attacks")
DEFAULT_OUT = REPO / "build" / "bench" / "mixed-1m.pcap"
FORMAT_VERSION = 1
LINKTYPE_ETHERNET = 1
FILE_GAP_NS = 1_000_000

Packet = tuple[int, bytes, int]  # (timestamp ns, captured bytes, original length)


# ---- reading -------------------------------------------------------------------------------


def _read_pcap(data: bytes) -> Iterator[Packet] | None:
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        return None
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack_from(end + "I", data, 20)
    if linktype & 0x0FFFFFFF != LINKTYPE_ETHERNET:
        return iter(())
    rec = struct.Struct(end + "IIII")
    scale = 1 if nano else 1000

    def packets() -> Iterator[Packet]:
        off = 24
        while off + 16 <= len(data):
            sec, frac, incl, orig = rec.unpack_from(data, off)
            off += 16
            if off + incl > len(data):
                return  # truncated last record
            yield sec * 1_000_000_000 + frac * scale, data[off : off + incl], orig
            off += incl

    return packets()


def _read_pcapng(data: bytes) -> Iterator[Packet] | None:
    if data[:4] != b"\x0a\x0d\x0d\x0a":
        return None

    def packets() -> Iterator[Packet]:
        off = 0
        end = "<"
        ifaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
        while off + 12 <= len(data):
            btype_raw = data[off : off + 4]
            if btype_raw == b"\x0a\x0d\x0d\x0a":
                bom = data[off + 8 : off + 12]
                end = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                ifaces = []
            btype, blen = struct.unpack_from(end + "II", data, off)
            if blen < 12 or off + blen > len(data):
                return
            body = data[off + 8 : off + blen - 4]
            if btype == 1:  # interface description
                (linktype,) = struct.unpack_from(end + "H", body, 0)
                ifaces.append((linktype, _if_tsresol(body[8:], end)))
            elif btype == 6:  # enhanced packet
                iface, hi, lo, incl, orig = struct.unpack_from(end + "IIIII", body, 0)
                if iface < len(ifaces) and ifaces[iface][0] == LINKTYPE_ETHERNET:
                    ticks = (hi << 32) | lo
                    per_s = ifaces[iface][1]
                    ts_ns = ticks * 1_000_000_000 // per_s
                    yield ts_ns, bytes(body[20 : 20 + incl]), orig
            off += blen

    return packets()


def _if_tsresol(opts: bytes, end: str) -> int:
    """Ticks per second from an interface block's if_tsresol option (default 10^6)."""
    off = 0
    while off + 4 <= len(opts):
        code, length = struct.unpack_from(end + "HH", opts, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = opts[off + 4]
            return 2 ** (v & 0x7F) if v & 0x80 else 10 ** (v & 0x7F)
        off += 4 + ((length + 3) & ~3)
    return 1_000_000


def read_ethernet_packets(path: Path) -> list[Packet]:
    """The Ethernet packets of a pcap or pcapng file; [] for other link types."""
    data = path.read_bytes()
    for reader in (_read_pcap, _read_pcapng):
        got = reader(data)
        if got is not None:
            return list(got)
    return []


def source_files() -> list[Path]:
    files: list[Path] = []
    for sub in SOURCE_DIRS:
        files += [
            p
            for p in sorted((DATA / sub).rglob("*"))
            if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap")
        ]
    return files


# ---- rewriting -----------------------------------------------------------------------------

# Per packet: where the words to shift are, and which checksums cover them.
# (ip offset or -1, IP version, offset of the L4 checksum or -1, udp, flow-key extractor data)
Layout = tuple[int, int, int, bool, int]


def _layout(frame: bytes) -> Layout:
    """Find the IP header after Ethernet and up to two VLAN tags; -1 when not IP."""
    if len(frame) < 14:
        return (-1, 0, -1, False, -1)
    (etype,) = struct.unpack_from("!H", frame, 12)
    off = 14
    for _ in range(2):
        if etype not in (0x8100, 0x88A8) or off + 4 > len(frame):
            break
        (etype,) = struct.unpack_from("!H", frame, off + 2)
        off += 4
    if etype == 0x0800 and off + 20 <= len(frame) and frame[off] >> 4 == 4:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF
        l4 = off + ihl
        csum = -1
        if frag == 0 and ihl >= 20:
            if proto == 6 and l4 + 18 <= len(frame):
                csum = l4 + 16
            elif proto == 17 and l4 + 8 <= len(frame):
                csum = l4 + 6
        ports = l4 if frag == 0 and proto in (6, 17) and l4 + 4 <= len(frame) else -1
        return (off, 4, csum, proto == 17, ports)
    if etype == 0x86DD and off + 40 <= len(frame) and frame[off] >> 4 == 6:
        proto = frame[off + 6]
        l4 = off + 40
        csum = -1
        if proto == 6 and l4 + 18 <= len(frame):
            csum = l4 + 16
        elif proto == 17 and l4 + 8 <= len(frame):
            csum = l4 + 6
        elif proto == 58 and l4 + 4 <= len(frame):
            csum = l4 + 2
        ports = l4 if proto in (6, 17) and l4 + 4 <= len(frame) else -1
        return (off, 6, csum, proto == 17, ports)
    return (-1, 0, -1, False, -1)


def _csum_adjust(csum: int, old: int, new: int) -> int:
    """RFC 1624 eq. 3: HC' = ~(~HC + ~m + m') for one changed 16-bit word."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def shift_addresses(frame: bytearray, layout: Layout, delta: int) -> None:
    """Add delta to one 16-bit word of source and destination address, fixing checksums."""
    ip, version, l4csum, udp, _ = layout
    if ip < 0 or delta == 0:
        return
    words = (ip + 12, ip + 16) if version == 4 else (ip + 10, ip + 26)
    changes = []
    for w in words:
        (old,) = struct.unpack_from("!H", frame, w)
        new = (old + delta) & 0xFFFF
        struct.pack_into("!H", frame, w, new)
        changes.append((old, new))
    if version == 4 and ip + 12 <= len(frame):
        (hc,) = struct.unpack_from("!H", frame, ip + 10)
        for old, new in changes:
            hc = _csum_adjust(hc, old, new)
        struct.pack_into("!H", frame, ip + 10, hc)
    if l4csum >= 0:
        (c,) = struct.unpack_from("!H", frame, l4csum)
        if udp and c == 0 and version == 4:
            return  # no UDP checksum
        for old, new in changes:
            c = _csum_adjust(c, old, new)
        if udp and c == 0:
            c = 0xFFFF
        struct.pack_into("!H", frame, l4csum, c)


def _flow_key(frame: bytearray, layout: Layout) -> tuple[bytes, ...] | None:
    ip, version, _, _, ports = layout
    if ip < 0:
        return None
    if version == 4:
        proto = frame[ip + 9 : ip + 10]
        a, b = bytes(frame[ip + 12 : ip + 16]), bytes(frame[ip + 16 : ip + 20])
    else:
        proto = frame[ip + 6 : ip + 7]
        a, b = bytes(frame[ip + 8 : ip + 24]), bytes(frame[ip + 24 : ip + 40])
    if ports >= 0:
        a += bytes(frame[ports : ports + 2])
        b += bytes(frame[ports + 2 : ports + 4])
    return (bytes(proto), a, b) if a <= b else (bytes(proto), b, a)


# ---- writing -------------------------------------------------------------------------------


def build(out: Path, packets: int, max_gap_ns: int, files: list[Path]) -> dict[str, int]:
    sources = []
    for path in files:
        pkts = read_ethernet_packets(path)
        if pkts:
            sources.append([(ts, frame, orig, _layout(frame)) for ts, frame, orig in pkts])
    if not sources:
        raise SystemExit(f"make_capture: no Ethernet packets under {DATA}")
    rec = struct.Struct("<IIII")
    tmp = out.with_suffix(".tmp")
    written = non_ip = 0
    rounds = 0
    flows: set[tuple[bytes, ...]] = set()
    t = 1_700_000_000 * 1_000_000_000  # 2023-11-14, any fixed epoch does
    with tmp.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        while written < packets:
            delta = rounds
            rounds += 1
            for pkts in sources:
                prev = pkts[0][0]
                t += FILE_GAP_NS
                for ts, frame, orig, layout in pkts:
                    gap = ts - prev
                    t += 0 if gap < 0 else min(gap, max_gap_ns)
                    prev = max(prev, ts)
                    buf = bytearray(frame)
                    shift_addresses(buf, layout, delta)
                    key = _flow_key(buf, layout)
                    if key is None:
                        non_ip += 1
                    else:
                        flows.add(key)
                    sec, ns = divmod(t, 1_000_000_000)
                    f.write(rec.pack(sec, ns // 1000, len(buf), orig))
                    f.write(buf)
                    written += 1
                    if written == packets:
                        break
                if written == packets:
                    break
    tmp.replace(out)
    return {
        "packets": written,
        "flows": len(flows),
        "non_ip": non_ip,
        "rounds": rounds,
        "files": len(sources),
        "per_round": sum(len(p) for p in sources),
    }


def _params(packets: int, max_gap_ns: int, files: list[Path]) -> dict[str, object]:
    return {
        "format_version": FORMAT_VERSION,
        "packets": packets,
        "max_gap_ns": max_gap_ns,
        "sources": [[str(p.relative_to(DATA)), p.stat().st_size] for p in files],
    }


def capture_path(packets: int) -> Path:
    """Where the benchmarks keep the capture of ``packets`` packets (mixed-1m, mixed-50k)."""
    name = "mixed-1m" if packets == 1_000_000 else f"mixed-{packets // 1000}k"
    return DEFAULT_OUT.with_name(f"{name}.pcap")


def ensure_capture(
    out: Path = DEFAULT_OUT, packets: int = 1_000_000, max_gap_s: float = 10.0
) -> dict[str, int]:
    """Build the capture unless one with the same parameters exists; return its counts."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path = out.with_suffix(".json")
    max_gap_ns = int(max_gap_s * 1e9)
    files = source_files()
    params = _params(packets, max_gap_ns, files)
    if out.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params:
            counts: dict[str, int] = meta["counts"]
            print(f"capture: {out} exists with the same parameters (cached)", flush=True)
            return counts
    started = time.perf_counter()
    counts = build(out, packets, max_gap_ns, files)
    meta_path.write_text(json.dumps({"params": params, "counts": counts}, indent=1))
    print(
        f"capture: wrote {out} ({out.stat().st_size / 1e6:.0f} MB) in "
        f"{time.perf_counter() - started:.1f} s from {counts['files']} Ethernet captures "
        f"({counts['per_round']} packets a round)",
        flush=True,
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: .venv/bin/python bench/make_capture.py --packets 50000 "
        "--out build/bench/mixed-50k.pcap",
    )
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets to write")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output pcap")
    parser.add_argument(
        "--max-gap-s", type=float, default=10.0, help="cap on the gap between two packets"
    )
    args = parser.parse_args(argv)
    c = ensure_capture(args.out, args.packets, args.max_gap_s)
    print(
        f"packets={c['packets']} flows={c['flows']} non_ip={c['non_ip']} "
        f"rounds={c['rounds']} files={c['files']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
