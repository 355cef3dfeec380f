"""Hash flooding of the native flow table (issue 19, finding 6).

Attack: the table placed flows by a hash with fixed constants (``mld_key_hash``), so an
attacker who knows the code can choose source and destination ports whose flows all land
in the same slot of the open-addressing table. Every new flow then walks the whole
cluster: 10k such flows made the engine 18x slower, a cheap way to starve the sensor. The
test computes that old, unseeded hash here (NumPy, 64x64->128-bit products from 32-bit
limbs), picks thousands of UDP flows that collide under it, writes them to a capture,
feeds it to the real engine and reads the engine's probe counter (``table_probes`` /
``table_lookups``). Before the fix the mean lookup examined ~N/2 slots; with the hash
seeded per table from getrandom() the crafted flows spread like any others.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

import native
from tests.native.pcapgen import eth, ipv4, udp, write_pcap

_M32 = np.uint64(0xFFFFFFFF)
_C = (
    0xA0761D6478BD642F,
    0xE7037ED1A0B428DB,
    0x8EBC6AF09C88C6E3,
    0x589965CC75374CC3,
    0x1D8E4E27C47D124F,
)
SRC, DST = "10.9.0.1", "10.9.0.2"  # SRC < DST: SRC is the key's lo endpoint
FLOWS = 3000  # stays in the table's first 8192 slots (it grows past 4096 live flows)
SLOT_BITS = 13


def _mum_scalar(a: int, b: int) -> int:
    r = a * b
    return (r & (2**64 - 1)) ^ (r >> 64)


def _mum(a: npt.NDArray[np.uint64], b: int) -> npt.NDArray[np.uint64]:
    """lo ^ hi of the 128-bit products a * b, from 32-bit limbs (no 128-bit integers)."""
    a0, a1 = a & _M32, a >> np.uint64(32)
    b0, b1 = np.uint64(b & 0xFFFFFFFF), np.uint64(b >> 32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> np.uint64(32)) + (p01 & _M32) + (p10 & _M32)
    lo = (p00 & _M32) | (mid << np.uint64(32))
    hi = p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (mid >> np.uint64(32))
    return lo ^ hi


def _addr_words(ip: str) -> tuple[int, int]:
    """The two little-endian 64-bit words of an IPv4-mapped address in the flow key."""
    b = bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(ip).packed
    return int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little")


def unseeded_hash(w4: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """native/flow_table.h's mld_key_hash before the seed, for SRC -> DST UDP keys whose
    fifth word (ports, protocol, version) is ``w4``."""
    w0, w1 = _addr_words(SRC)
    w2, w3 = _addr_words(DST)
    h = _mum_scalar(w0 ^ _C[0], w1 ^ _C[1])
    h = _mum_scalar(h ^ w2 ^ _C[2], w3 ^ _C[3])
    return _mum(np.uint64(h) ^ w4, _C[4])


def colliding_ports(n: int) -> list[tuple[int, int]]:
    """``n`` (sport, dport) pairs whose SRC -> DST UDP flows share the low SLOT_BITS bits
    of the unseeded hash: one home slot in a table of up to 2**SLOT_BITS slots."""
    found: list[tuple[int, int]] = []
    dports = np.arange(1, 65536, dtype=np.uint64)
    tail = np.uint64(17 << 32 | 4 << 40)  # protocol UDP, IPv4
    mask = np.uint64((1 << SLOT_BITS) - 1)
    for sport in range(1024, 65536):
        w4 = np.uint64(sport) | (dports << np.uint64(16)) | tail
        hit = dports[(unseeded_hash(w4) & mask) == 0]
        found.extend((sport, int(d)) for d in hit)
        if len(found) >= n:
            return found[:n]
    raise AssertionError("not enough colliding keys")


def _capture(path: Path, ports: list[tuple[int, int]]) -> Path:
    t0 = 1_700_000_000 * 10**9
    return write_pcap(
        path,
        (
            (t0 + i * 1000, eth(ipv4(SRC, DST, 17, udp(s, d, b"x"))))
            for i, (s, d) in enumerate(ports)
        ),
    )


def _feed(path: Path) -> tuple[float, float]:
    """Mean slots examined per lookup, and seconds, for one engine reading ``path``."""
    engine = native.FlowEngine(idle_timeout_s=3600, active_timeout_s=3600)
    started = time.perf_counter()
    for _ in engine.feed_file(path):
        pass
    took = time.perf_counter() - started
    stats = engine.stats
    assert stats["flows_created"] == FLOWS
    assert stats["table_lookups"] >= FLOWS
    engine.finish()
    return stats["table_probes"] / stats["table_lookups"], took


def test_crafted_colliding_flows_stay_short(tmp_path: Path) -> None:
    ports = colliding_ports(FLOWS)
    assert len(set(ports)) == FLOWS
    crafted, crafted_s = _feed(_capture(tmp_path / "crafted.pcap", ports))
    rng = np.random.default_rng(19)
    plain = [(int(s), int(d)) for s, d in rng.integers(1024, 65536, size=(FLOWS, 2))]
    plain = list(dict.fromkeys(plain))
    while len(plain) < FLOWS:  # distinct keys, like the crafted ones
        plain.append((len(plain) + 1, 7))
    baseline, baseline_s = _feed(_capture(tmp_path / "plain.pcap", plain))
    print(
        f"probes/lookup crafted={crafted:.2f} plain={baseline:.2f}; "
        f"seconds crafted={crafted_s:.3f} plain={baseline_s:.3f}"
    )
    # At most half full, linear probing averages ~1.5 slots (hit) to ~2.5 (miss) per lookup.
    assert baseline < 4
    assert crafted < 4, f"{crafted:.0f} slots per lookup: the crafted flows collide"
