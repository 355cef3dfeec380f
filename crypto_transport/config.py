"""Typed settings of the encrypted transport (the ``transport`` section of mld.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_CHANNEL_SENDERS", "TransportConfig"]

# Which roles may send on each channel: a receiver refuses (``unauthorized_role``) an
# authentic frame from a peer that holds none of them.
DEFAULT_CHANNEL_SENDERS: dict[str, tuple[str, ...]] = {
    "flows": ("sniffer",),
    "verdicts": ("detector",),
    "events": ("detector",),
    "blocks": ("firewall",),
}


@dataclass(frozen=True)
class TransportConfig:
    # This node's X25519 private key (raw base64, mode 0600); `mld keys new` writes one.
    key_file: str = "/etc/mld/keys/node.key"
    # Peers this node talks to: peer id -> base64 X25519 public key.
    peers: dict[str, str] = field(default_factory=dict)
    # Roles of peers whose name does not spell one (sniffer, detector, firewall, rag,
    # watch): peer id -> roles. A peer named detector-1 or sensor-1 needs no entry.
    peer_roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Channel name -> roles that may send on it (receivers refuse other senders).
    channel_senders: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_CHANNEL_SENDERS)
    )
    # Authenticate every connection with ZeroMQ CURVE (the X25519 keys above): only known
    # peers allowed on a channel may connect. false only to debug with plain ZeroMQ tools.
    curve: bool = True
    # Seconds a replaced key (ours or a peer's) is still accepted after a rotation.
    rotation_grace_s: float = 300.0
    # Sequence numbers accepted behind the newest one seen from a sender (anti-replay).
    replay_window: int = 4096
    # Largest frame read off the wire, in bytes; ZeroMQ cuts off a peer sending a bigger
    # one. The largest real frame of 100 records is 17 KB (an event batch; 101 KB at 1000
    # records: bench/batch_sizes.py), so 1 MiB fits 1000-record batches even incompressible.
    max_frame_bytes: int = 1024 * 1024
    # Largest decompressed batch, in bytes (decompression-bomb cap): 63 KB per 100 events
    # (588 KB per 1000), so 4 MiB fits about 6000 records a batch.
    max_decompressed_bytes: int = 4 * 1024 * 1024
    # ZeroMQ high-water marks, in messages, per connection; past them PUSH waits and PUB
    # drops for that subscriber. A receiver buffers at most recv_hwm x max_frame_bytes per
    # sender (256 MiB worst case, about 4 MiB of real 17 KB batches).
    send_hwm: int = 1000
    recv_hwm: int = 256
    # How long a PUSH send waits for room before the batch is dropped and counted, in ms.
    send_timeout_ms: int = 1000
    # LZ4 acceleration (1 = best ratio; higher trades ratio for speed, see bench/transport.py).
    lz4_acceleration: int = 1
    # A batch is sent when it holds this many records ... (the detector's cost is mostly per
    # batch: 300 takes ~40% less of its CPU per record than 100, bench/README.md "Batch size")
    batch_records: int = 300
    # ... or when its oldest record has waited this long, in seconds: what bounds the time a
    # lone record waits at a low rate (the sniffer's ring-buffer poll wakes for it, so idle
    # costs nothing; a full batch leaves at once, so a busy sensor is not affected).
    batch_max_delay_s: float = 0.05
    # A rejection reason is logged at most once per peer per this many seconds.
    reject_log_interval_s: float = 60.0
