"""Authenticated, compressed transport for every message between ML Defender processes.

Frames are ``version | key id | sequence | nonce | XChaCha20-Poly1305(LZ4(protobuf batch))``
(see ``frame.py``); keys come from X25519 agreement between each sender's and receiver's key
pair (``keys.py``); channels wrap ZeroMQ PUSH/PULL and PUB/SUB (``channel.py``) and are
opened from a service's endpoint settings in one place (``endpoints.py``); an output
that must never hold up its caller sends from a bounded queue on its own thread
(``queued.py``). A receiver
accepts frames only from peers whose role may send on its channel, every connection is
authenticated with ZeroMQ CURVE over the same keys (``curve.py``), and the newest
sequence number per key survives a restart (``replay.py``). docs/TRANSPORT.md has it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
    from crypto_transport.batcher import Batcher
    from crypto_transport.channel import Received, Receiver, Sender
    from crypto_transport.config import TransportConfig
    from crypto_transport.counters import REJECT_REASONS, ChannelCounters
    from crypto_transport.endpoints import (
        ChannelEnd,
        ReceivingEnd,
        SendingEnd,
        open_receiver,
        open_sender,
    )
    from crypto_transport.frame import FRAME_VERSION
    from crypto_transport.keys import KeyPair, Keyring, SessionKey, load_public_key
    from crypto_transport.queued import QueuedSender
    from crypto_transport.replay import replay_state_path

__all__ = [
    "FRAME_VERSION",
    "REJECT_REASONS",
    "Batcher",
    "ChannelCounters",
    "ChannelEnd",
    "KeyPair",
    "Keyring",
    "QueuedSender",
    "Received",
    "Receiver",
    "ReceivingEnd",
    "Sender",
    "SendingEnd",
    "SessionKey",
    "TransportConfig",
    "load_public_key",
    "open_receiver",
    "open_sender",
    "replay_state_path",
]

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "crypto_transport.batcher": ("Batcher",),
        "crypto_transport.channel": (
            "Received",
            "Receiver",
            "Sender",
        ),
        "crypto_transport.config": ("TransportConfig",),
        "crypto_transport.counters": (
            "REJECT_REASONS",
            "ChannelCounters",
        ),
        "crypto_transport.endpoints": (
            "ChannelEnd",
            "ReceivingEnd",
            "SendingEnd",
            "open_receiver",
            "open_sender",
        ),
        "crypto_transport.frame": ("FRAME_VERSION",),
        "crypto_transport.keys": (
            "KeyPair",
            "Keyring",
            "SessionKey",
            "load_public_key",
        ),
        "crypto_transport.queued": ("QueuedSender",),
        "crypto_transport.replay": ("replay_state_path",),
    },
)
