"""native.json_floats and json_lines against Python's own round(), repr() and json.dumps:
the JSON writer of ``mld detector analyze`` relies on them giving the same text for every
value."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from native._flowengine import json_addresses, json_floats, json_lines
from sniffer.batch_windows import address_keys


def _expected(values: np.ndarray, ndigits: int) -> list[str]:
    return [json.dumps(round(v, ndigits)) for v in values.tolist()]


def _values() -> np.ndarray:
    rng = np.random.default_rng(20)
    edge = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-5, -1e-5, 5e-5, 1.5e-4, 1e300, -1e300]
    edge += [1e16, 1e15, 123456789012345.67, 2.0**53, 0.5, 1.5, 2.5, -0.5, 0.125, 2.675]
    return np.ascontiguousarray(
        np.concatenate(
            [
                rng.random(20_000),
                rng.random(20_000).astype(np.float32).astype(np.float64),  # scores
                rng.random(5_000) * 1e12,
                -rng.random(5_000) * 100,
                1.7e9 + rng.random(10_000) * 1e6,  # timestamps in seconds
                rng.integers(1_600_000_000 * 10**9, 1_800_000_000 * 10**9, 20_000) / 1e9,
                # Exact binary ties at 6 decimals (odd/128) on timestamps, and past 2^52 units.
                1_700_000_000 + (2 * np.arange(2000) + 1) / 128,
                4_600_000_000 + (2 * np.arange(200) + 1) / 128,
                rng.random(5_000) * 2**60,
                rng.integers(0, 2**40, 5_000) / 1e9,
                # Exact and near ties at every precision used.
                (np.arange(-2000, 2000) + 0.5) / 1e4,
                (np.arange(-2000, 2000) + 0.5) / 1e3,
                (np.arange(0, 2000) + 0.5) / 1e6 + 1.7e3,
                np.arange(-2000, 2000) / 1e4,
                edge,
            ]
        ),
        dtype=np.float64,
    )


@pytest.mark.parametrize("ndigits", range(9))
def test_same_text_as_round_then_repr(ndigits: int) -> None:
    values = _values()
    got = json_floats(values, ndigits)
    want = _expected(values, ndigits)
    wrong = [(v, g, w) for v, g, w in zip(values.tolist(), got, want, strict=True) if g != w]
    assert not wrong, wrong[:5]


def test_rejects_what_it_cannot_format() -> None:
    with pytest.raises(ValueError, match="ndigits"):
        json_floats(np.zeros(3), 9)
    with pytest.raises(TypeError, match="float64"):
        json_floats(np.zeros(3, dtype=np.float32), 4)
    with pytest.raises(TypeError, match="float64"):
        json_floats(np.zeros((2, 2)), 4)
    assert json_floats(np.zeros(0), 4) == []


def _addresses() -> list[bytes]:
    rng = np.random.default_rng(7)
    out = [bytes(rng.integers(0, 256, 4, dtype=np.uint8)) for _ in range(2_000)]
    out += [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x0a\x00\x00\x01"]
    # IPv6 with zero hextets in every pattern: random words, each zero half the time.
    for _ in range(5_000):
        words = np.where(rng.random(8) < 0.5, 0, rng.integers(0, 1 << 16, 8))
        out.append(b"".join(int(w).to_bytes(2, "big") for w in words))
    out += [bytes(16), bytes(15) + b"\x01", b"\xfe\x80" + bytes(14)]
    out += [bytes(10) + b"\xff\xff\x01\x02\x03\x04", bytes(12) + b"\x01\x02\x03\x04"]  # mapped
    return out


def test_addresses_as_python_writes_them() -> None:
    from sniffer.batch_windows import address_keys

    addrs = _addresses()
    got = json_addresses(address_keys(addrs))
    want = [json.dumps(str(ipaddress.ip_address(a))) for a in addrs]
    wrong = [(a, g, w) for a, g, w in zip(addrs, got, want, strict=True) if g != w]
    assert not wrong, wrong[:5]
    with pytest.raises(ValueError, match="17"):
        json_addresses(np.zeros((2, 16), dtype=np.uint8))


def test_json_lines_writes_what_json_dumps_writes() -> None:
    """Every part kind of json_lines against json.dumps of the same values."""
    rng = np.random.default_rng(5)
    n = 3_000
    ints = rng.integers(-(2**62), 2**62, n)
    uints = rng.integers(0, 2**63, n).astype(np.uint64) * np.uint64(2)
    floats = np.concatenate([rng.random(n - 4) * 1e3, [np.nan, -np.inf, 2.5e-5, -0.0]])
    addrs = [bytes(rng.integers(0, 256, 4 if i % 3 else 16, dtype=np.uint8)) for i in range(n)]
    texts = [json.dumps(t) for t in rng.choice(["scan", "", 'a"b', "é"], n).tolist()]
    k = 3
    idx = rng.integers(0, 4, (n, k))
    values = rng.random((n, k)) * 100
    weights = np.where(rng.random((n, k)) < 0.3, 0.0, rng.random((n, k)))
    names = ["f.a", "f.b", 'f"c', "f.d"]
    got = json_lines(
        n,
        [
            b'{"i":',
            ("i", ints),
            b',"u":',
            ("u", uints),
            b',"f":',
            ("f", floats, 4),
            b',"a":',
            ("a", address_keys(addrs)),
            b',"s":',
            ("s", texts),
            b',"t":',
            ("t", idx, values, weights, [json.dumps(x) for x in names], 4, 3),
            b"}",
        ],
    ).decode()
    want = []
    for i in range(n):
        top = [
            {"name": names[j], "value": round(v, 4), "weight": round(w, 3)}
            for j, v, w in zip(
                idx[i].tolist(), values[i].tolist(), weights[i].tolist(), strict=True
            )
            if w > 0
        ]
        row = {
            "i": int(ints[i]),
            "u": int(uints[i]),
            "f": round(float(floats[i]), 4),
            "a": str(ipaddress.ip_address(addrs[i])),
            "s": json.loads(texts[i]),
            "t": top,
        }
        want.append(json.dumps(row, separators=(",", ":")) + "\n")
    assert got == "".join(want)
    assert json_lines(0, [b"x", ("i", np.zeros(0, np.int64))]) == b""


def test_json_lines_refuses_bad_parts() -> None:
    col = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="integer column"):
        json_lines(4, [("i", col)])
    with pytest.raises(ValueError, match="unknown part kind"):
        json_lines(3, [("x", col)])
    with pytest.raises(TypeError, match="neither bytes nor a tuple"):
        json_lines(3, ["text"])
    with pytest.raises(ValueError, match="list of 3 str"):
        json_lines(3, [("s", ["a", "b"])])
    with pytest.raises(IndexError, match="feature index"):
        bad = np.full((3, 1), 7, np.int64)
        json_lines(3, [("t", bad, np.ones((3, 1)), np.ones((3, 1)), ['"a"'], 4, 3)])
    with pytest.raises(ValueError, match="address of 5 bytes"):
        json_lines(1, [("a", np.full((1, 17), 5, np.uint8))])


def test_json_lines_lets_other_threads_run_while_it_makes_the_text() -> None:
    """`mld detector analyze` makes a batch's text on a writer thread while the main thread
    scores the next batch: that only overlaps if json_lines lets the GIL go. The main thread
    counts how often it ran Python after the worker thread marked the start of its call and
    before the call returned. With a long switch interval the worker cannot be made to give
    the GIL up between its mark and the call, so holding the GIL for the whole call gives
    0 (main's json_lines did). The values include ones that take the exact path (which
    takes the GIL back for CPython's conversions) and the text is checked."""
    rng = np.random.default_rng(7)
    n = 400_000
    floats = np.concatenate([rng.random(n - 2) * 1e3, [2.5e-5, 1e300]])
    parts = [b'{"f":', ("f", floats, 4), b',"i":', ("i", np.arange(n, dtype=np.int64)), b"}"]
    want = json_lines(n, [b'{"f":', ("f", floats, 4), b"}"]).split(b"\n")
    marks: list[int] = []
    result: list[bytes] = []

    def make() -> None:
        marks.append(1)
        result.append(json_lines(n, parts))

    meanwhile = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    try:
        for _ in range(3):  # the OS may not run the main thread during one call
            marks.clear()
            result.clear()
            worker = threading.Thread(target=make)
            worker.start()
            while not result:
                if marks:
                    meanwhile += 1
            worker.join()
            lines = result[0].split(b"\n")
            assert len(lines) == n + 1
            assert [line.split(b',"i":')[0] + b"}" for line in lines[:-1]] == want[:-1]
            if meanwhile > 0:
                break
    finally:
        sys.setswitchinterval(interval)
    assert meanwhile > 0


def test_json_lines_writes_to_a_file_descriptor(tmp_path: Path) -> None:
    """json_lines(n, parts, fd) writes what json_lines(n, parts) returns (no bytes object
    is made: the writer thread of `mld detector analyze` writes the text straight from the
    native buffer) and says how many bytes; a reader that went away is BrokenPipeError."""
    rng = np.random.default_rng(11)
    n = 20_000
    parts = [b'{"f":', ("f", rng.random(n) * 1e3, 4), b',"s":', ("s", ['"x"'] * n), b"}"]
    want = json_lines(n, parts)
    out = tmp_path / "lines.jsonl"
    with out.open("wb") as f:
        f.write(b"before\n")
        f.flush()
        assert json_lines(n, parts, f.fileno()) == len(want)
        assert json_lines(0, parts[:1], f.fileno()) == 0
    assert out.read_bytes() == b"before\n" + want
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        with pytest.raises(BrokenPipeError):
            json_lines(n, parts, write_end)
    finally:
        os.close(write_end)
