"""Child-process side of test_channel's two-process round trip (imported by a 'spawn' child).

Kept in its own module so the child can import it by a plain name: the test module itself is
imported by pytest under a name the child cannot resolve.
"""

from __future__ import annotations

import zmq

from crypto_transport import KeyPair, Keyring, Sender, TransportConfig
from proto import FlowBatch


def run_sender(
    endpoint: str,
    private_key: bytes,
    receiver_id: str,
    receiver_public: bytes,
    sender_id: str,
    settings: TransportConfig,
    payloads: list[bytes],
) -> None:
    """Send each serialized FlowBatch in ``payloads`` on a PUSH socket, then exit."""
    context = zmq.Context()
    try:
        keyring = Keyring(KeyPair.from_private(private_key), grace_s=settings.rotation_grace_s)
        keyring.add_peer(receiver_id, receiver_public)
        with Sender(
            pattern="push",
            endpoint=endpoint,
            channel="flows",
            sender_id=sender_id,
            keyring=keyring,
            recipients=[receiver_id],
            settings=settings,
            context=context,
        ) as sender:
            for payload in payloads:
                if not sender.send(FlowBatch.FromString(payload)):
                    raise RuntimeError(f"send dropped a batch: {dict(sender.counters.dropped)}")
    finally:
        # Waits (up to the sockets' linger) until the frames are delivered.
        context.term()
