"""Attacks on the transport by holders of a known key, over real ZeroMQ sockets (issue 19,
finding 5): a role that may not send on a channel, recorded frames replayed after a
receiver restart, a subscriber that never reads.

Every keyring here is built the way the services build theirs, from ``transport``
settings and key files (``Keyring.from_config``), and every receiver is opened with
``open_receiver`` as the firewall, the detector and the RAG store open theirs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from base.errors import ConfigError
from config import MldConfig
from crypto_transport import (
    ChannelEnd,
    KeyPair,
    Keyring,
    Sender,
    TransportConfig,
    open_receiver,
)
from proto import FlowBatch, Verdict, VerdictBatch

EXPECT_MS = 3000


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


class Node:
    """One node: a key file on disk and the transport settings naming its peers."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.key_file = tmp_path / f"{name}.key"
        self.pair = KeyPair.generate()
        self.pair.save(self.key_file)

    def settings(self, *peers: Node, **overrides: Any) -> TransportConfig:
        base = dataclasses.replace(
            MldConfig().transport,
            key_file=str(self.key_file),
            peers={p.name: p.pair.public_b64 for p in peers},
        )
        return dataclasses.replace(base, **overrides)

    def ring(self, *peers: Node, **overrides: Any) -> Keyring:
        return Keyring.from_config(self.settings(*peers, **overrides))


def _verdicts(n: int, detector_id: str) -> VerdictBatch:
    return VerdictBatch(
        detector_id=detector_id,
        batch_seq=n,
        verdicts=[Verdict(verdict_id=f"{detector_id}-{n}", ml_score=1.0, ml_family="syn_flood")],
    )


def test_a_sniffer_key_cannot_send_verdicts_to_the_firewall(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Attack: an attacker who took over a sensor host holds its transport key, which the
    firewall knows (one deployment, one set of peers). It seals a VerdictBatch naming
    8.8.8.8 for the firewall's verdict channel. Before the fix any known key could send
    on any channel and the firewall accepted the batch (and would block 8.8.8.8); now the
    authentic frame is refused as ``unauthorized_role``, while the detector's verdicts on
    the same socket still arrive."""
    firewall = Node(tmp_path, "firewall-1")
    detector = Node(tmp_path, "detector-1")
    sensor = Node(tmp_path, "sensor-1")
    fw_ring = firewall.ring(detector, sensor)
    receiver = open_receiver(
        ChannelEnd("tcp://127.0.0.1:*", "pull", "verdicts"),
        VerdictBatch,
        keyring=fw_ring,
        settings=firewall.settings(detector, sensor),
        context=zctx,
    )
    try:
        endpoint = receiver.bound_endpoint
        senders = {
            node.name: Sender(
                pattern="push",
                endpoint=endpoint,
                channel="verdicts",
                sender_id=node.name,
                keyring=node.ring(firewall),
                recipients=[firewall.name],
                settings=node.settings(firewall),
                context=zctx,
            )
            for node in (sensor, detector)
        }
        try:
            assert senders["sensor-1"].send(_verdicts(1, "sensor-1"))
            assert senders["detector-1"].send(_verdicts(2, "detector-1"))
            got = receiver.recv(timeout_ms=EXPECT_MS)
            assert got is not None, "the detector's verdicts did not arrive"
            assert got.peer_id == "detector-1", (
                f"the firewall accepted verdicts from {got.peer_id}: any known key may "
                "send on any channel"
            )
            assert got.message.batch_seq == 2
            assert receiver.counters.rejected["unauthorized_role"] == 1
            assert receiver.counters.received == 1
        finally:
            for s in senders.values():
                s.close()
    finally:
        receiver.close()


def test_a_firewall_key_cannot_send_flows_to_the_detector(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Attack: the firewall's key (a detector knows it: it sends verdicts there) used to
    feed forged flows into the detector's flow channel; only sniffers may send flows."""
    detector = Node(tmp_path, "detector-1")
    firewall = Node(tmp_path, "firewall-1")
    receiver = open_receiver(
        ChannelEnd("tcp://127.0.0.1:*", "pull", "flows"),
        FlowBatch,
        keyring=detector.ring(firewall),
        settings=detector.settings(firewall),
        context=zctx,
    )
    with (
        receiver,
        Sender(
            pattern="push",
            endpoint=receiver.bound_endpoint,
            channel="flows",
            sender_id=firewall.name,
            keyring=firewall.ring(detector),
            recipients=[detector.name],
            settings=firewall.settings(detector),
            context=zctx,
        ) as sender,
    ):
        assert sender.send(FlowBatch(sensor_id="sensor-1", batch_seq=1))
        deadline_ms = EXPECT_MS
        assert receiver.recv(timeout_ms=deadline_ms) is None
        assert receiver.counters.rejected["unauthorized_role"] == 1


def test_peer_roles_come_from_the_config_or_a_clear_error(tmp_path: Path) -> None:
    """Old-form peers keep loading when their names say their component; a name that
    says nothing is refused with a ConfigError that says what to write."""
    me = Node(tmp_path, "firewall-1")
    det = Node(tmp_path, "det-a")
    with pytest.raises(ConfigError, match=r"transport.peer_roles: \{det-a: \[ROLE\]\}"):
        me.ring(det)
    ring = me.ring(det, peer_roles={"det-a": ("detector",)})
    assert ring.roles_of("det-a") == {"detector"}
    both = Node(tmp_path, "edge-7")
    ring = me.ring(both, peer_roles={"edge-7": ("sniffer", "detector")})
    assert ring.roles_of("edge-7") == {"sniffer", "detector"}
    assert Node(tmp_path, "sensor-2").name and me.ring(Node(tmp_path, "sensor-2")).roles_of(
        "sensor-2"
    ) == {"sniffer"}
    with pytest.raises(ConfigError, match="not a role"):
        me.ring(det, peer_roles={"det-a": ("admin",)})
    with pytest.raises(ConfigError, match="names no peer"):
        me.ring(det, peer_roles={"det-a": ("detector",), "ghost": ("sniffer",)})
    # "sniffer-detector-1" names two components: ambiguous, refused.
    with pytest.raises(ConfigError, match="does not say which component"):
        me.ring(Node(tmp_path, "sniffer-detector-1"))
