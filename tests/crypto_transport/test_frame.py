"""Sealing and opening one frame: layout, authentication, and every FrameRejected reason."""

from __future__ import annotations

import os
import struct

import lz4.block
import pytest

from base.errors import FrameRejected, TransportError
from crypto_transport import frame
from crypto_transport.frame import FRAME_VERSION, HEADER, OVERHEAD, open_payload, parse_header, seal

KEY = bytes(range(32))
KEY_ID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
SEQ = 1_700_000_000_000_000_000
CHANNEL = b"flows"
SENDER = b"sensor-1"
CAP = 64 * 1024 * 1024
PAYLOAD = b"flow record " * 50


def _seal(payload: bytes = PAYLOAD, **kw: object) -> bytes:
    args: dict[str, object] = {
        "key": KEY,
        "key_id": KEY_ID,
        "seq": SEQ,
        "channel": CHANNEL,
        "sender_id": SENDER,
    }
    args.update(kw)
    return seal(payload, **args)  # type: ignore[arg-type]


def _open(data: bytes, **kw: object) -> bytes:
    _, _, nonce = parse_header(data)
    args: dict[str, object] = {
        "key": KEY,
        "nonce": nonce,
        "channel": CHANNEL,
        "sender_id": SENDER,
        "max_decompressed": CAP,
    }
    args.update(kw)
    return open_payload(data, **args)  # type: ignore[arg-type]


def _rejected(data: bytes, **kw: object) -> str:
    with pytest.raises(FrameRejected) as info:
        _open(data, **kw)
    return info.value.reason


def test_round_trip_and_layout() -> None:
    data = _seal()
    key_id, seq, nonce = parse_header(data)
    assert (key_id, seq) == (KEY_ID, SEQ)
    assert len(nonce) == 24
    assert data[0] == FRAME_VERSION == 1
    assert data[1:9] == KEY_ID
    assert struct.unpack(">Q", data[9:17])[0] == SEQ
    assert data[17:41] == nonce
    compressed = lz4.block.compress(PAYLOAD, store_size=True)
    assert len(data) == HEADER.size + len(compressed) + 16 == OVERHEAD + len(compressed)
    assert _open(data) == PAYLOAD


def test_payload_is_compressed_and_encrypted() -> None:
    payload = b"A" * 100_000
    data = _seal(payload)
    assert len(data) < len(payload) // 10
    assert b"AAAAAAAA" not in data
    assert _open(data) == payload


def test_empty_payload_round_trips() -> None:
    assert _open(_seal(b"")) == b""


def test_random_payload_round_trips() -> None:
    payload = os.urandom(70_000)
    assert _open(_seal(payload, acceleration=8)) == payload


def test_two_seals_of_one_payload_use_different_nonces() -> None:
    a, b = _seal(), _seal()
    assert parse_header(a)[2] != parse_header(b)[2]
    assert a[HEADER.size :] != b[HEADER.size :]
    assert _open(a) == _open(b) == PAYLOAD


def test_precompressed_block_is_sealed_as_given() -> None:
    compressed = frame.compress(PAYLOAD, 1)
    data = _seal(b"ignored", compressed=compressed)
    assert _open(data) == PAYLOAD


# --- parse_header ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 17, 41, OVERHEAD - 1])
def test_short_frame_is_truncated(size: int) -> None:
    data = _seal()[:size]
    with pytest.raises(FrameRejected) as info:
        parse_header(data)
    assert info.value.reason == "truncated"
    assert isinstance(info.value, TransportError)
    assert str(info.value).startswith("truncated: ")


def test_frame_of_exactly_the_overhead_passes_the_header_but_not_the_tag() -> None:
    data = _seal()
    short = data[: HEADER.size] + data[-16:]
    assert len(short) == OVERHEAD
    parse_header(short)
    assert _rejected(short) == "bad_tag"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_version_is_refused(version: int) -> None:
    data = bytes([version]) + _seal()[1:]
    with pytest.raises(FrameRejected) as info:
        parse_header(data)
    assert info.value.reason == "bad_version"
    assert f"version {version}" in info.value.detail


# --- authentication --------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize(
    "index",
    [HEADER.size, HEADER.size + 5, -17, -1, 17, 40],
    ids=["first-ciphertext", "ciphertext", "last-ciphertext", "tag", "nonce-first", "nonce-last"],
)
def test_flipped_byte_fails_the_tag(index: int) -> None:
    assert _rejected(_flip(_seal(), index)) == "bad_tag"


def test_wrong_key_fails_the_tag() -> None:
    assert _rejected(_seal(), key=bytes(32)) == "bad_tag"


def test_other_channel_fails_the_tag() -> None:
    assert _rejected(_seal(), channel=b"verdicts") == "bad_tag"


def test_other_sender_id_fails_the_tag() -> None:
    assert _rejected(_seal(), sender_id=b"sensor-2") == "bad_tag"


def test_channel_and_sender_boundary_is_bound() -> None:
    """Names are length-prefixed: moving a byte from the channel to the sender id fails."""
    data = _seal(channel=b"flowsX", sender_id=b"a")
    assert _open(data, channel=b"flowsX", sender_id=b"a") == PAYLOAD
    assert _rejected(data, channel=b"flows", sender_id=b"Xa") == "bad_tag"


def test_altered_sequence_fails_the_tag() -> None:
    data = _seal()
    renumbered = data[:9] + struct.pack(">Q", SEQ + 1) + data[17:]
    assert parse_header(renumbered)[1] == SEQ + 1
    assert _rejected(renumbered) == "bad_tag"


def test_altered_key_id_fails_the_tag() -> None:
    data = _seal()
    assert _rejected(_flip(data, 1)) == "bad_tag"


# --- decompression ---------------------------------------------------------------------


def test_size_prefix_over_the_cap_is_a_decompression_bomb() -> None:
    big = b"\x00" * (2 * 1024 * 1024)
    compressed = lz4.block.compress(big, store_size=True)
    assert len(compressed) < 20_000
    data = _seal(b"", compressed=compressed)
    assert _rejected(data, max_decompressed=1024 * 1024) == "decompression_bomb"
    # At the cap it opens.
    assert _open(data, max_decompressed=len(big)) == big
    assert _rejected(data, max_decompressed=len(big) - 1) == "decompression_bomb"


def test_hand_built_gigabyte_claim_is_refused_before_decompressing() -> None:
    compressed = struct.pack("<I", 1 << 30) + b"\x00"
    data = _seal(b"", compressed=compressed)
    with pytest.raises(FrameRejected) as info:
        _open(data)
    assert info.value.reason == "decompression_bomb"
    assert str(1 << 30) in info.value.detail
    assert "max_decompressed_bytes" in info.value.detail


@pytest.mark.parametrize(
    "compressed",
    [
        b"",
        b"\x01\x02",
        struct.pack("<I", 100) + b"\xff" * 10,
        struct.pack("<I", 10) + lz4.block.compress(b"abc" * 1000, store_size=False),
    ],
    ids=["empty", "shorter-than-prefix", "garbage", "prefix-too-small"],
)
def test_corrupt_block_is_bad_compression(compressed: bytes) -> None:
    data = _seal(b"", compressed=compressed)
    assert _rejected(data) == "bad_compression"
