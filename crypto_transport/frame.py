"""The wire frame: seal and open one LZ4-compressed, AEAD-sealed payload.

Layout (all integers big-endian)::

    offset  size  field
    0       1     version      FRAME_VERSION (1)
    1       8     key id       names the sender->receiver key (see keys.py)
    9       8     sequence     the sender's frame number (see replay.py)
    17      24    nonce        random 192-bit XChaCha20 nonce, never reused
    41      n+16  ciphertext   XChaCha20-Poly1305 over the compressed payload, with its tag

The payload is an LZ4 block whose first 4 bytes (little-endian) give its decompressed size,
so a decompression bomb is refused before any memory is allocated. The associated data
binds the header (version, key id, sequence), the channel name and the sender id, so a
frame moved to another channel, credited to another sender or renumbered fails to open.
"""

from __future__ import annotations

import struct
from typing import Final

import lz4.block
import nacl.bindings
import nacl.exceptions
import nacl.utils

from base.errors import FrameRejected
from crypto_transport.keys import KEY_ID_BYTES

__all__ = [
    "FRAME_VERSION",
    "HEADER",
    "OVERHEAD",
    "associated_data",
    "open_payload",
    "parse_header",
    "peek_key_id",
    "seal",
]

FRAME_VERSION: Final = 1
TAG_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
NONCE_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
HEADER: Final = struct.Struct(f">B{KEY_ID_BYTES}sQ{NONCE_BYTES}s")
OVERHEAD: Final = HEADER.size + TAG_BYTES
# The header before the nonce (version, key id, sequence): what the tag authenticates.
_AUTH_HEADER_BYTES: Final = HEADER.size - NONCE_BYTES
_KEY_ID: Final = slice(1, 1 + KEY_ID_BYTES)
_SIZE_PREFIX: Final = struct.Struct("<I")

_encrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt


def associated_data(header: bytes, channel: bytes, sender_id: bytes) -> bytes:
    """What the tag authenticates besides the ciphertext (names are length-prefixed)."""
    return b"".join(
        (
            header,
            _SIZE_PREFIX.pack(len(channel)),
            channel,
            _SIZE_PREFIX.pack(len(sender_id)),
            sender_id,
        )
    )


def compress(payload: bytes, acceleration: int) -> bytes:
    block: bytes = lz4.block.compress(
        payload, mode="fast", acceleration=acceleration, store_size=True
    )
    return block


def seal(
    payload: bytes,
    *,
    key: bytes,
    key_id: bytes,
    seq: int,
    channel: bytes,
    sender_id: bytes,
    acceleration: int = 1,
    compressed: bytes | None = None,
) -> bytes:
    """Compress ``payload`` and seal it into one frame.

    ``compressed`` lets a caller that seals the same payload for several receivers compress
    it once.
    """
    if compressed is None:
        compressed = compress(payload, acceleration)
    nonce = nacl.utils.random(NONCE_BYTES)
    header = HEADER.pack(FRAME_VERSION, key_id, seq, nonce)
    aad = associated_data(header[:_AUTH_HEADER_BYTES], channel, sender_id)
    return header + _encrypt(compressed, aad, nonce, key)


def peek_key_id(frame: bytes) -> bytes | None:
    """The key id of a frame too damaged to parse (for naming its sender), or None."""
    return frame[_KEY_ID] if len(frame) >= _KEY_ID.stop else None


def parse_header(frame: bytes) -> tuple[bytes, int, bytes]:
    """Check size and version; return (key id, sequence, nonce)."""
    if len(frame) < OVERHEAD:
        raise FrameRejected("truncated", f"{len(frame)} bytes, a frame has at least {OVERHEAD}")
    version, key_id, seq, nonce = HEADER.unpack_from(frame)
    if version != FRAME_VERSION:
        raise FrameRejected(
            "bad_version", f"frame version {version}, this build speaks {FRAME_VERSION}"
        )
    return key_id, seq, nonce


def open_payload(
    frame: bytes,
    *,
    key: bytes,
    nonce: bytes,
    channel: bytes,
    sender_id: bytes,
    max_decompressed: int,
) -> bytes:
    """Authenticate, decrypt and decompress a frame whose header already passed."""
    aad = associated_data(frame[:_AUTH_HEADER_BYTES], channel, sender_id)
    try:
        compressed = _decrypt(frame[HEADER.size :], aad, nonce, key)
    except nacl.exceptions.CryptoError:
        raise FrameRejected(
            "bad_tag",
            "authentication failed: the frame was altered, sealed for another channel, or the "
            "sender's node.id differs from its name under transport.peers",
        ) from None
    if len(compressed) < _SIZE_PREFIX.size:
        raise FrameRejected("bad_compression", "payload shorter than its size prefix")
    (size,) = _SIZE_PREFIX.unpack_from(compressed)
    if size > max_decompressed:
        raise FrameRejected(
            "decompression_bomb",
            f"payload claims {size} bytes decompressed, the cap is {max_decompressed} "
            "(transport.max_decompressed_bytes)",
        )
    try:
        return bytes(lz4.block.decompress(compressed))
    except lz4.block.LZ4BlockError as exc:
        raise FrameRejected("bad_compression", f"LZ4 block is corrupt: {exc}") from None
