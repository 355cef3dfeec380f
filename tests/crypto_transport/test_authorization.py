"""Attacks on the transport by holders of a known key, over real ZeroMQ sockets (issue 19,
finding 5): a role that may not send on a channel, recorded frames replayed after a
receiver restart, a subscriber that never reads.

Every keyring here is built the way the services build theirs, from ``transport``
settings and key files (``Keyring.from_config``), and every receiver is opened with
``open_receiver`` as the firewall, the detector and the RAG store open theirs.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from base.errors import ConfigError, TransportError
from config import MldConfig
from control import EtcdServer, ServiceControl
from control.layout import public_key_key
from crypto_transport import (
    ChannelEnd,
    KeyPair,
    Keyring,
    Received,
    Receiver,
    Sender,
    TransportConfig,
    frame,
    open_receiver,
)
from crypto_transport.curve import curve_client
from crypto_transport.replay import ReplayState, replay_state_path
from proto import FlowBatch, Verdict, VerdictBatch
from tests.control.support import client as control_client
from tests.control.support import mld_config, receiver_stand_in
from tests.support import FakeClock, wait_for

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


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "frames-only"])
def test_a_sniffer_key_cannot_send_verdicts_to_the_firewall(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]], curve: bool
) -> None:
    """Attack: an attacker who took over a sensor host holds its transport key, which the
    firewall knows (one deployment, one set of peers). It seals a VerdictBatch for the
    firewall's verdict channel. Before the fix any known key could send on any channel
    and the firewall accepted the batch (and would block what it names). Now the
    firewall's CURVE handshake refuses the sensor's connection, and with CURVE off (the
    frame check alone) the authentic frame is refused as ``unauthorized_role``; the
    detector's verdicts on the same socket still arrive either way."""
    firewall = Node(tmp_path, "firewall-1")
    detector = Node(tmp_path, "detector-1")
    sensor = Node(tmp_path, "sensor-1")
    fw_ring = firewall.ring(detector, sensor, curve=curve)
    receiver = open_receiver(
        ChannelEnd("tcp://127.0.0.1:*", "pull", "verdicts"),
        VerdictBatch,
        keyring=fw_ring,
        settings=firewall.settings(detector, sensor, curve=curve),
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
                settings=node.settings(firewall, curve=curve),
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
            if curve:
                assert receiver.counters.refused_connections >= 1
                assert receiver.recv(timeout_ms=300) is None
                assert not receiver.counters.rejected
            else:
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
    feed forged flows into the detector's flow channel; only sniffers may send flows.
    (Frame check alone, CURVE off: the CURVE refusal is the test above.)"""
    detector = Node(tmp_path, "detector-1")
    firewall = Node(tmp_path, "firewall-1")
    receiver = open_receiver(
        ChannelEnd("tcp://127.0.0.1:*", "pull", "flows"),
        FlowBatch,
        keyring=detector.ring(firewall),
        settings=detector.settings(firewall, curve=False),
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
            settings=firewall.settings(detector, curve=False),
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


# --- replay after a receiver restart ------------------------------------------------------

# 2020-06-01 00:00 UTC in ns: a sender started then numbers its frames from here.
NS_2020 = 1_590_969_600 * 10**9


def _frames_until(receiver: Receiver[Any], count: int) -> list[Received[Any]]:
    """Run the receiver until ``count`` frames were accepted or refused; the accepted."""
    accepted: list[Received[Any]] = []
    deadline = time.monotonic() + EXPECT_MS / 1000
    while len(accepted) + sum(receiver.counters.rejected.values()) < count:
        assert time.monotonic() < deadline, dict(receiver.counters.rejected)
        got = receiver.recv(timeout_ms=50)
        if got is not None:
            accepted.append(got)
    return accepted


def test_recorded_frames_are_refused_after_a_receiver_restart(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Attack: an on-path attacker records the sealed flow batches a sensor sends to the
    detector (and, from long ago, batches of 2020: their sequence numbers are 2020's
    wall-clock ns) and sends them again after the detector restarts. Before the fix the
    restarted receiver began with empty replay windows and accepted every recorded frame
    once more (old flows scored again, old verdicts sent again). Now the newest number
    per key is kept in node.state_dir/transport/ and every recorded frame is refused.

    CURVE is off here: with it (the default) the wire is encrypted again and an on-path
    recorder gets nothing to replay; the frame layer tested here is what holds for a
    frame recorded anywhere else (a host's capture, a debug log, CURVE turned off)."""
    detector = Node(tmp_path, "detector-1")
    sensor = Node(tmp_path, "sensor-1")
    s_ring = sensor.ring(detector)
    state = replay_state_path(tmp_path / "state", "detector-det-1", "flows")
    endpoint = f"ipc://{tmp_path}/flows.sock"

    def receiver() -> Receiver[FlowBatch]:
        return open_receiver(
            ChannelEnd(endpoint, "pull", "flows"),
            FlowBatch,
            keyring=detector.ring(sensor),
            settings=detector.settings(sensor, curve=False),
            context=zctx,
            replay_state=state,
        )

    # Frames the sensor sent in 2020, sealed with the same keys.
    key = s_ring.sending_key(detector.name)
    old = [
        frame.seal(
            FlowBatch(sensor_id=sensor.name, batch_seq=i).SerializeToString(),
            key=key.key,
            key_id=key.key_id,
            seq=NS_2020 + i,
            channel=b"flows",
            sender_id=sensor.name.encode(),
        )
        for i in range(1, 3)
    ]
    # Today's frames, recorded off the wire: the real sender sends to the attacker's tap.
    tap = zctx.socket(zmq.PULL)
    tap_endpoint = f"ipc://{tmp_path}/tap.sock"
    tap.bind(tap_endpoint)
    with Sender(
        pattern="push",
        endpoint=tap_endpoint,
        channel="flows",
        sender_id=sensor.name,
        keyring=s_ring,
        recipients=[detector.name],
        settings=sensor.settings(detector, curve=False),
        context=zctx,
    ) as real:
        for i in range(3):
            assert real.send(FlowBatch(sensor_id=sensor.name, batch_seq=100 + i))
        recorded = []
        for _ in range(3):
            assert tap.poll(EXPECT_MS)
            recorded.append(tap.recv())
    tap.close(linger=0)

    def injector() -> zmq.Socket[bytes]:
        # A fresh connection per receiver: frames queued for a closed one would be lost.
        sock = zctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        return sock

    # The detector receives today's frames (relayed by the attacker): accepted.
    first = receiver()
    inject = injector()
    try:
        for data in recorded:
            inject.send(data)
        got = [first.recv(timeout_ms=EXPECT_MS) for _ in recorded]
        assert [g.message.batch_seq for g in got if g] == [100, 101, 102]
    finally:
        inject.close(linger=0)
        first.close()
    assert state.is_file()
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700

    # The detector restarts; the attacker sends the recorded frames again.
    second = receiver()
    inject = injector()
    try:
        for data in old + recorded:
            inject.send(data)
        accepted = _frames_until(second, len(old) + len(recorded))
        assert not accepted, f"a restarted receiver accepted {len(accepted)} recorded frames"
        assert second.counters.rejected["out_of_window"] == 2  # 2020's
        assert second.counters.rejected["replay"] == 3  # today's
        # The sensor's next real frame is still accepted.
        with Sender(
            pattern="push",
            endpoint=endpoint,
            channel="flows",
            sender_id=sensor.name,
            keyring=s_ring,
            recipients=[detector.name],
            settings=sensor.settings(detector, curve=False),
            context=zctx,
        ) as real:
            assert real.send(FlowBatch(sensor_id=sensor.name, batch_seq=200))
            got2 = second.recv(timeout_ms=EXPECT_MS)
            assert got2 is not None and got2.message.batch_seq == 200
    finally:
        inject.close(linger=0)
        second.close()


def test_replay_state_is_saved_at_most_once_a_second(tmp_path: Path) -> None:
    clock = FakeClock()
    state = ReplayState(tmp_path / "t" / "s.json", clock=clock)
    assert state.load() == {}
    assert state.maybe_save({b"k" * 8: 5})
    assert not state.maybe_save({b"k" * 8: 6})
    assert state.load() == {b"k" * 8: 5}
    clock.advance(1.0)
    assert state.maybe_save({b"k" * 8: 7})
    assert state.load() == {b"k" * 8: 7}
    assert [p.name for p in state.path.parent.iterdir()] == ["s.json"]  # no temporary left


def test_a_damaged_replay_state_stops_the_receiver_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"newest": {"zz": 1}}')
    with pytest.raises(TransportError, match=r"damaged .* delete it"):
        ReplayState(path).load()


# --- a subscriber that never reads ------------------------------------------------------


def test_a_subscriber_that_never_reads_does_not_hold_up_the_others(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Attack: a subscriber of the verdict PUB (a firewall host the attacker took over,
    so it passes authentication) subscribes to every frame, not only its own, and never
    reads. Before the fix the publisher used XPUB_NODROP: once that queue was full every
    publish failed, so the other firewalls lost every batch from then on. Now the
    reader that never reads loses its own copies only; N publishes take bounded time and
    the real subscriber gets all N."""
    detector = Node(tmp_path, "detector-1")
    firewall = Node(tmp_path, "firewall-1")
    taken = Node(tmp_path, "firewall-2")
    settings = detector.settings(firewall, taken, send_hwm=10, recv_hwm=10)
    endpoint = f"ipc://{tmp_path}/pub.sock"
    publisher = Sender(
        pattern="pub",
        endpoint=endpoint,
        channel="verdicts",
        sender_id=detector.name,
        keyring=detector.ring(firewall, taken),
        recipients=[firewall.name, taken.name],
        settings=settings,
        context=zctx,
    )
    subscriber = open_receiver(
        ChannelEnd(endpoint, "sub", "verdicts"),
        VerdictBatch,
        keyring=firewall.ring(detector),
        settings=firewall.settings(detector),
        context=zctx,
    )
    squatter = zctx.socket(zmq.SUB)
    curve_client(
        squatter,
        public=taken.pair.public,
        secret=taken.pair.private,
        server_public=detector.pair.public,
    )
    try:
        squatter.setsockopt(zmq.LINGER, 0)
        squatter.setsockopt(zmq.RCVHWM, 1)
        squatter.setsockopt(zmq.SUBSCRIBE, b"")
        squatter.connect(endpoint)
        assert publisher.wait_for_subscribers(2, 5.0) == 2
        # Incompressible, 64 KiB: the squatter's queue and socket buffers fill quickly.
        bulk = os.urandom(64 * 1024).hex()
        n = 300
        started = time.monotonic()
        for i in range(n):
            publisher.send(VerdictBatch(detector_id=bulk, batch_seq=i))
            # The real subscriber keeps up (reads each batch as it comes).
            item = subscriber.recv(timeout_ms=EXPECT_MS)
            assert item is not None, (
                f"batch {i} never reached the real subscriber: publisher dropped "
                f"{dict(publisher.counters.dropped)} because of a subscriber that never reads"
            )
            assert item.message.batch_seq == i
        took = time.monotonic() - started
        assert not publisher.counters.dropped
        assert took < 30, f"{n} publishes took {took:.1f} s"
    finally:
        squatter.close(linger=0)
        subscriber.close()
        publisher.close()


def test_a_stranger_cannot_subscribe_to_the_verdicts(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Attack: anyone who reaches the verdict PUB endpoint connects a SUB (plain, or
    CURVE with a key of its own) to squat on it. Before the fix both were served (and
    the one that never read stopped every publish, see above); now neither completes a
    handshake: no subscription reaches the publisher and nothing reaches them."""
    detector = Node(tmp_path, "detector-1")
    firewall = Node(tmp_path, "firewall-1")
    endpoint = f"ipc://{tmp_path}/pub.sock"
    publisher = Sender(
        pattern="pub",
        endpoint=endpoint,
        channel="verdicts",
        sender_id=detector.name,
        keyring=detector.ring(firewall),
        recipients=[firewall.name],
        settings=detector.settings(firewall),
        context=zctx,
    )
    plain = zctx.socket(zmq.SUB)
    stranger = zctx.socket(zmq.SUB)
    key = KeyPair.generate()
    curve_client(
        stranger, public=key.public, secret=key.private, server_public=detector.pair.public
    )
    try:
        for sock in (plain, stranger):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(endpoint)
        wait_for(lambda: publisher.counters.refused_connections >= 1, 5, "the ZAP refusal")
        assert publisher.wait_for_subscribers(1, 0.5) == 0
        for i in range(20):
            publisher.send(VerdictBatch(detector_id=detector.name, batch_seq=i))
        assert not plain.poll(300) and not stranger.poll(300)
    finally:
        plain.close(linger=0)
        stranger.close(linger=0)
        publisher.close()


def test_a_stranger_cannot_connect_to_a_receiver(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A PUSH without CURVE, or with an unknown key, never gets a frame to the
    receiver: before the fix its junk was read, and refused frame by frame."""
    detector = Node(tmp_path, "detector-1")
    sensor = Node(tmp_path, "sensor-1")
    receiver = open_receiver(
        ChannelEnd(f"ipc://{tmp_path}/flows.sock", "pull", "flows"),
        FlowBatch,
        keyring=detector.ring(sensor),
        settings=detector.settings(sensor),
        context=zctx,
    )
    plain = zctx.socket(zmq.PUSH)
    stranger = zctx.socket(zmq.PUSH)
    key = KeyPair.generate()
    curve_client(
        stranger, public=key.public, secret=key.private, server_public=detector.pair.public
    )
    try:
        for sock in (plain, stranger):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(receiver.bound_endpoint)
            sock.send(b"\x01" + os.urandom(100), zmq.NOBLOCK)
        wait_for(lambda: receiver.counters.refused_connections >= 1, 5, "the ZAP refusal")
        assert receiver.recv(timeout_ms=300) is None
        assert not receiver.counters.rejected and not receiver.counters.received
    finally:
        plain.close(linger=0)
        stranger.close(linger=0)
        receiver.close()


def test_a_sender_refused_before_its_key_was_learnt_gets_through_later(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """With etcd a sensor may connect before the detector has learnt its key: the first
    handshake is refused and ZeroMQ would never try again. The sender connects again
    (Redial) and its batches flow once the key is known."""
    detector = Node(tmp_path, "detector-1")
    sensor = Node(tmp_path, "sensor-1")
    d_ring = detector.ring()
    receiver = open_receiver(
        ChannelEnd(f"ipc://{tmp_path}/flows.sock", "pull", "flows"),
        FlowBatch,
        keyring=d_ring,
        settings=detector.settings(),
        context=zctx,
    )
    sender = Sender(
        pattern="push",
        endpoint=receiver.bound_endpoint,
        channel="flows",
        sender_id=sensor.name,
        keyring=sensor.ring(detector),
        recipients=[detector.name],
        settings=sensor.settings(detector),
        context=zctx,
        immediate=True,  # as DiscoveredSender: nothing is queued for a refused connection
    )
    try:
        sender.send(FlowBatch(batch_seq=1))
        wait_for(lambda: receiver.counters.refused_connections >= 1, 5, "the refusal")
        d_ring.add_peer(sensor.name, sensor.pair.public, roles=["sniffer"])
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            sender.send(FlowBatch(batch_seq=2))
            got = receiver.recv(timeout_ms=200)
        assert got is not None, "the sender never connected again after the refusal"
        assert got.peer_id == sensor.name
    finally:
        sender.close()
        receiver.close()


# --- roles of keys learnt from etcd -------------------------------------------------------


@pytest.mark.etcd
def test_a_key_from_etcd_sends_only_as_the_component_it_registered_as(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Attack: with a control plane every node learns every key of the key directory, so
    the firewall knows the sensors' keys. Before the fix a key learnt from etcd could
    send on any channel: a taken-over sensor sent verdicts to the firewall. Now a key
    from etcd has the roles of its instance's registrations (services/<component>/<id>):
    the sensor's connection to the verdict endpoint is refused, the detector's works."""
    fw_plane, receiver = receiver_stand_in(
        etcd_server, etcd_prefix, tmp_path / "f", "firewall", "fw-e", "verdicts", VerdictBatch
    )
    planes: list[ServiceControl[Any]] = [fw_plane]
    senders: dict[str, Sender] = {}
    try:
        for component, name in (("sniffer", "sensor-e"), ("detector", "det-e")):
            ring = Keyring(KeyPair.generate(), grace_s=60)
            plane: ServiceControl[Any] = ServiceControl(
                mld_config(etcd_server, etcd_prefix, tmp_path / name),
                component=component,
                instance=name,
                keyring=ring,
            )
            planes.append(plane)
            plane.start()
            plane.announce()

            def knows_firewall(plane: ServiceControl[Any] = plane, ring: Keyring = ring) -> bool:
                plane.poll()
                return "fw-e" in ring.peers

            wait_for(knows_firewall, 10, f"{name} to learn the firewall's key")
            senders[name] = Sender(
                pattern="push",
                endpoint=receiver.bound_endpoint,
                channel="verdicts",
                sender_id=name,
                keyring=ring,
                recipients=["fw-e"],
                settings=TransportConfig(),
            )

        def knows_both() -> bool:
            fw_plane.poll()
            ring = fw_plane.keyring
            assert ring is not None
            return ring.roles_of("sensor-e") == {"sniffer"} and ring.roles_of("det-e") == {
                "detector"
            }

        wait_for(knows_both, 10, "the firewall to learn both keys and their roles")
        senders["sensor-e"].send(VerdictBatch(detector_id="sensor-e", batch_seq=1))
        senders["det-e"].send(VerdictBatch(detector_id="det-e", batch_seq=2))
        got = receiver.recv(timeout_ms=EXPECT_MS)
        assert got is not None and got.peer_id == "det-e"
        assert receiver.recv(timeout_ms=500) is None
        assert receiver.counters.refused_connections >= 1
        assert receiver.counters.received == 1
    finally:
        for sender in senders.values():
            sender.close()
        receiver.close()
        for plane in planes:
            plane.close()


def test_a_subscriber_waits_for_its_publishers_key_then_connects(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A firewall subscribing to a detector's PUB may start before it has learnt the
    detector's key (from etcd): it opens, connects once the key is there, and gets the
    verdicts published after that."""
    detector = Node(tmp_path, "detector-1")
    firewall = Node(tmp_path, "firewall-1")
    endpoint = f"ipc://{tmp_path}/pub.sock"
    fw_ring = firewall.ring()
    subscriber = open_receiver(
        ChannelEnd(endpoint, "sub", "verdicts"),
        VerdictBatch,
        keyring=fw_ring,
        settings=firewall.settings(),
        context=zctx,
    )
    publisher = Sender(
        pattern="pub",
        endpoint=endpoint,
        channel="verdicts",
        sender_id=detector.name,
        keyring=detector.ring(firewall),
        recipients=[firewall.name],
        settings=detector.settings(firewall),
        context=zctx,
    )
    try:
        assert subscriber.recv(timeout_ms=300) is None
        assert publisher.wait_for_subscribers(1, 0.3) == 0
        # The key arrives without its role first (key directory before registration).
        fw_ring.add_peer(detector.name, detector.pair.public)
        assert subscriber.recv(timeout_ms=300) is None
        fw_ring.add_peer(detector.name, detector.pair.public, roles=["detector"])
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            publisher.send(VerdictBatch(detector_id=detector.name, batch_seq=7))
            got = subscriber.recv(timeout_ms=200)
        assert got is not None and got.message.batch_seq == 7
    finally:
        publisher.close()
        subscriber.close()


@pytest.mark.etcd
def test_a_key_written_over_another_instances_directory_entry_gets_no_role(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Attack: every component's etcd certificate may write <prefix>/keys/ (control/rbac.py:
    the directory is by instance id, shared by a node's services), and a key from the
    directory took the roles of its instance's registrations. A taken-over sensor, with
    the sniffer's own certificate, wrote a key of its own over the detector's directory
    entry: the firewall learnt it as the detector's, with the detector's role, and took
    the sensor's verdicts as the detector's (anything it names gets blocked). Now a
    registration grants its component only to the key it names itself (services/ is
    writable by that component alone), and that key stays the instance's: the forged
    key is refused and the real detector's verdicts still get through."""
    fw_plane, receiver = receiver_stand_in(
        etcd_server, etcd_prefix, tmp_path / "f", "firewall", "fw-k", "verdicts", VerdictBatch
    )
    det_key = KeyPair.generate()
    det_plane: ServiceControl[Any] = ServiceControl(
        mld_config(etcd_server, etcd_prefix, tmp_path / "d"),
        component="detector",
        instance="det-k",
        keyring=Keyring(det_key, grace_s=0),
    )
    attacker = KeyPair.generate()
    sender: Sender | None = None
    sniffer_etcd = control_client(etcd_server, "sniffer")
    try:
        det_plane.start()
        det_plane.announce()
        ring = fw_plane.keyring
        assert ring is not None

        def knows(public: bytes) -> bool:
            fw_plane.poll()
            return ring.peers.get("det-k") == public

        wait_for(lambda: knows(det_key.public), 10, "the firewall to learn the detector's key")
        assert ring.roles_of("det-k") == {"detector"}
        # The sensor's certificate may write there (the etcd's real roles refuse it
        # nothing here), so the directory now names the attacker's key for det-k.
        sniffer_etcd.put(public_key_key(etcd_prefix, "det-k"), attacker.public_b64)
        assert sniffer_etcd.get(public_key_key(etcd_prefix, "det-k")) == (
            attacker.public_b64.encode()
        )
        session = fw_plane.session
        assert session is not None

        def saw_the_entry() -> bool:
            # Either way the firewall took the change in: it refused the entry (counted)
            # or took the attacker's key for det-k (what it did before the fix).
            fw_plane.poll()
            return session.counters.get("disowned_keys", 0) >= 1 or knows(attacker.public)

        wait_for(saw_the_entry, 10, "the firewall to see the overwritten entry")

        attacker_ring = Keyring(attacker, grace_s=0)
        attacker_ring.add_peer("fw-k", ring.own.public)
        sender = Sender(
            pattern="push",
            endpoint=receiver.bound_endpoint,
            channel="verdicts",
            sender_id="det-k",
            keyring=attacker_ring,
            recipients=["fw-k"],
            settings=TransportConfig(),
        )
        sender.send(VerdictBatch(detector_id="det-k", batch_seq=1))
        got: list[Received[VerdictBatch]] = []

        def decided() -> bool:
            item = receiver.recv(timeout_ms=100)
            if item is not None:
                got.append(item)
            return bool(got) or receiver.counters.refused_connections >= 1

        wait_for(decided, 10, "the firewall to take or refuse the forged key's connection")
        assert got == [], "the firewall took the attacker's verdicts as the detector's"
        assert receiver.counters.received == 0
        assert ring.peers.get("det-k") == det_key.public
        assert ring.roles_of("det-k") == {"detector"}
        # The real detector is not locked out by the overwritten entry.
        det_ring = Keyring(det_key, grace_s=0)
        det_ring.add_peer("fw-k", ring.own.public)
        real = Sender(
            pattern="push",
            endpoint=receiver.bound_endpoint,
            channel="verdicts",
            sender_id="det-k",
            keyring=det_ring,
            recipients=["fw-k"],
            settings=TransportConfig(),
        )
        try:
            real.send(VerdictBatch(detector_id="det-k", batch_seq=2))
            item = receiver.recv(timeout_ms=EXPECT_MS)
            assert item is not None and item.peer_id == "det-k"
            assert item.message.batch_seq == 2
        finally:
            real.close()
    finally:
        if sender is not None:
            sender.close()
        receiver.close()
        sniffer_etcd.close()
        det_plane.close()
        fw_plane.close()
