"""Encrypted channels over real ZeroMQ sockets: PUSH/PULL, PUB/SUB, rejections, rotation."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from google.protobuf.message import DecodeError

from base.errors import TransportError
from config import MldConfig
from crypto_transport import KeyPair, Keyring, Received, Receiver, Sender, TransportConfig, frame
from crypto_transport.counters import RejectLog
from crypto_transport.curve import curve_client
from crypto_transport.keys import SessionKey
from proto import DirectionStats, FlowBatch, FlowRecord, VerdictBatch
from tests.support import FakeClock

SENSOR = "sensor-1"
DETECTOR = "detector-1"
CHANNEL = "flows"
GRACE_S = 300.0
EXPECT_MS = 2000  # waiting for a frame that must arrive
SILENCE_MS = 200  # waiting to show that nothing arrives


def _settings(**overrides: Any) -> TransportConfig:
    return dataclasses.replace(MldConfig().transport, **overrides)


def _tcp_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _ipc_endpoint(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.sock"
    assert len(str(path)) < 100, "ipc path too long for a unix socket"
    return f"ipc://{path}"


def _batch(batch_seq: int, records: int = 3) -> FlowBatch:
    return FlowBatch(
        sensor_id=SENSOR,
        batch_seq=batch_seq,
        started_ts_ns=1_700_000_000_000_000_000,
        sent_ts_ns=1_700_000_000_000_000_000 + batch_seq,
        records=[
            FlowRecord(
                flow_id=batch_seq * 1000 + i,
                ip_version=4,
                src_addr=bytes([10, 0, 0, i + 1]),
                dst_addr=bytes([192, 168, 0, 1]),
                src_port=40000 + i,
                dst_port=443,
                protocol=6,
                fwd=DirectionStats(packets=i + 1, bytes=100 * (i + 1), syn_count=1),
                bwd=DirectionStats(packets=i, bytes=80 * i),
                observation_point="eth0",
            )
            for i in range(records)
        ],
    )


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        # Closes whatever a failing test left open, then terminates.
        ctx.destroy(linger=0)


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Things with a close() method, closed in reverse order after the test."""
    things: list[Any] = []
    try:
        yield things
    finally:
        for thing in reversed(things):
            thing.close()


@dataclass
class Link:
    """A Receiver (PULL, bound) and a Sender (PUSH) with matching keyrings."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    endpoint: str
    settings: TransportConfig
    clock: FakeClock
    sensor: KeyPair
    detector: KeyPair
    s_ring: Keyring
    r_ring: Keyring
    sender: Sender
    receiver: Receiver[FlowBatch]
    closing: list[Any]
    next_batch: int = field(default=1)

    def raw_push(self) -> zmq.Socket[bytes]:
        """A bare PUSH holding the sensor's CURVE credentials: it gets through the
        connection check, so the frames it sends meet the receiver's frame checks."""
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        self.closing.append(sock)
        curve_client(
            sock, public=self.sensor.public, secret=self.sensor.private,
            server_public=self.detector.public,
        )  # fmt: skip
        sock.connect(self.endpoint)
        return sock

    def seal(
        self,
        payload: bytes,
        seq: int,
        *,
        key: SessionKey | None = None,
        channel: str = CHANNEL,
        sender_id: str = SENSOR,
        compressed: bytes | None = None,
    ) -> bytes:
        key = key or self.s_ring.sending_key(DETECTOR)
        return frame.seal(
            payload,
            key=key.key,
            key_id=key.key_id,
            seq=seq,
            channel=channel.encode(),
            sender_id=sender_id.encode(),
            compressed=compressed,
        )

    def good(self) -> Received[FlowBatch]:
        """Send the next batch through the real Sender; it must arrive intact."""
        batch = _batch(self.next_batch)
        self.next_batch += 1
        assert self.sender.send(batch)
        got = self.receiver.recv(timeout_ms=EXPECT_MS)
        assert got is not None, "the receiver stopped serving good frames"
        assert got.message == batch
        assert got.peer_id == SENSOR
        return got


LinkFactory = Callable[..., Link]


@pytest.fixture
def make_link(
    zctx: zmq.Context[zmq.Socket[bytes]], closing: list[Any], tmp_path: Path
) -> LinkFactory:
    def make(*, endpoint: str | None = None, **overrides: Any) -> Link:
        settings = _settings(**overrides)
        endpoint = endpoint or _ipc_endpoint(tmp_path, "pull")
        clock = FakeClock()
        sensor, detector = KeyPair.generate(), KeyPair.generate()
        s_ring = Keyring(sensor, grace_s=GRACE_S, clock=clock)
        s_ring.add_peer(DETECTOR, detector.public)
        r_ring = Keyring(detector, grace_s=GRACE_S, clock=clock)
        r_ring.add_peer(SENSOR, sensor.public, roles=["sniffer"])
        receiver: Receiver[FlowBatch] = Receiver(
            pattern="pull",
            endpoint=endpoint,
            channel=CHANNEL,
            keyring=r_ring,
            message_type=FlowBatch,
            settings=settings,
            context=zctx,
        )
        closing.append(receiver)
        sender = Sender(
            pattern="push",
            endpoint=endpoint,
            channel=CHANNEL,
            sender_id=SENSOR,
            keyring=s_ring,
            recipients=[DETECTOR],
            settings=settings,
            context=zctx,
        )
        closing.append(sender)
        return Link(
            ctx=zctx,
            endpoint=endpoint,
            settings=settings,
            clock=clock,
            sensor=sensor,
            detector=detector,
            s_ring=s_ring,
            r_ring=r_ring,
            sender=sender,
            receiver=receiver,
            closing=closing,
        )

    return make


@pytest.fixture
def link(make_link: LinkFactory) -> Link:
    return make_link()


def _drain_until_rejected(receiver: Receiver[Any], reason: str, count: int) -> None:
    """Let the receiver process frames until ``count`` were rejected for ``reason``;
    none of them may come out as an accepted batch."""
    deadline = time.monotonic() + EXPECT_MS / 1000
    while receiver.counters.rejected[reason] < count:
        assert time.monotonic() < deadline, (
            f"expected {count} x {reason}, counted {dict(receiver.counters.rejected)}"
        )
        got = receiver.recv(timeout_ms=50)
        assert got is None, f"a frame that should be rejected ({reason}) was accepted: {got}"


# --- round trips -----------------------------------------------------------------------


def test_round_trip_over_tcp(make_link: LinkFactory) -> None:
    link = make_link(endpoint=_tcp_endpoint())
    batches = [_batch(n, records=5) for n in range(1, 4)]
    for b in batches:
        assert link.sender.send(b) is True

    got = [link.receiver.recv(timeout_ms=EXPECT_MS) for _ in batches]

    assert all(g is not None for g in got)
    assert [g.message for g in got if g] == batches
    assert {g.peer_id for g in got if g} == {SENSOR}
    seqs = [g.seq for g in got if g]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    # A sender numbers its frames from the wall clock at its start.
    assert abs(seqs[0] - time.time_ns()) < 60 * 10**9
    assert link.receiver.recv(timeout_ms=SILENCE_MS) is None

    s, r = link.sender.counters, link.receiver.counters
    assert (s.sent, r.received) == (3, 3)
    assert s.sent_bytes == r.received_bytes > 0
    assert r.missing == 0
    assert not r.rejected
    assert not s.dropped
    snap = r.snapshot()
    assert snap["received"] == 3
    assert snap["received_bytes"] == r.received_bytes


def test_empty_batch_round_trips(link: Link) -> None:
    assert FlowBatch().SerializeToString() == b""
    assert link.sender.send(FlowBatch())
    got = link.receiver.recv(timeout_ms=EXPECT_MS)
    assert got is not None
    assert got.message == FlowBatch()


def test_send_payload_sends_a_serialized_batch(link: Link) -> None:
    batch = _batch(9, records=50)
    assert link.sender.send_payload(batch.SerializeToString())
    got = link.receiver.recv(timeout_ms=EXPECT_MS)
    assert got is not None
    assert got.message == batch


def test_round_trip_between_two_processes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    zctx: zmq.Context[zmq.Socket[bytes]],
    closing: list[Any],
) -> None:
    # The spawn child imports the helper by a plain module name from this directory.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import _spawn_sender

    settings = _settings()
    endpoint = _ipc_endpoint(tmp_path, "mp")
    sensor, detector = KeyPair.generate(), KeyPair.generate()
    r_ring = Keyring(detector, grace_s=GRACE_S)
    r_ring.add_peer(SENSOR, sensor.public, roles=["sniffer"])
    receiver: Receiver[FlowBatch] = Receiver(
        pattern="pull",
        endpoint=endpoint,
        channel=CHANNEL,
        keyring=r_ring,
        message_type=FlowBatch,
        settings=settings,
        context=zctx,
    )
    closing.append(receiver)
    batches = [_batch(n, records=n % 7) for n in range(40)]

    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(
        target=_spawn_sender.run_sender,
        args=(
            endpoint,
            sensor.private,
            DETECTOR,
            detector.public,
            SENSOR,
            settings,
            [b.SerializeToString() for b in batches],
        ),
    )
    child.start()
    try:
        got = []
        for _ in batches:
            r = receiver.recv(timeout_ms=15_000)  # the first waits for the child to start
            assert r is not None, f"only {len(got)} of {len(batches)} batches arrived"
            got.append(r)
        child.join(timeout=10)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        child.close()

    assert [r.message for r in got] == batches
    assert {r.peer_id for r in got} == {SENSOR}
    assert [r.seq for r in got] == list(range(got[0].seq, got[0].seq + len(batches)))
    assert receiver.counters.received == len(batches)
    assert not receiver.counters.rejected
    assert receiver.recv(timeout_ms=SILENCE_MS) is None


# --- frames the receiver refuses -------------------------------------------------------


def _intruder_frame(link: Link, last_seq: int) -> bytes:
    intruder = Keyring(KeyPair.generate(), grace_s=GRACE_S)
    intruder.add_peer(DETECTOR, link.detector.public)
    return link.seal(
        _batch(99).SerializeToString(), last_seq - 1, key=intruder.sending_key(DETECTOR)
    )


def _tampered(link: Link, last_seq: int) -> bytes:
    data = bytearray(link.seal(_batch(99).SerializeToString(), last_seq - 1))
    data[frame.HEADER.size + 2] ^= 0x40
    return bytes(data)


def _bad_protobuf(link: Link, last_seq: int) -> bytes:
    payload = b"\xff\xff\xff\xff"
    with pytest.raises(DecodeError):
        FlowBatch.FromString(payload)
    return link.seal(payload, last_seq - 1)


BAD_FRAMES: dict[str, tuple[str, Callable[[Link, int], bytes]]] = {
    "truncated": ("truncated", lambda link, seq: b"\x01" + bytes(30)),
    "bad_version": (
        "bad_version",
        lambda link, seq: b"\x02" + link.seal(b"", seq - 1)[1:],
    ),
    "unknown_key": ("unknown_key", _intruder_frame),
    "tampered": ("bad_tag", _tampered),
    "other_channel": (
        "bad_tag",
        lambda link, seq: link.seal(_batch(99).SerializeToString(), seq - 1, channel="verdicts"),
    ),
    "other_sender_id": (
        "bad_tag",
        lambda link, seq: link.seal(_batch(99).SerializeToString(), seq - 1, sender_id="sensor-2"),
    ),
    "out_of_window": (
        "out_of_window",
        lambda link, seq: link.seal(_batch(99).SerializeToString(), seq - 10**6),
    ),
    "decompression_bomb": (
        "decompression_bomb",
        lambda link, seq: link.seal(b"", seq - 1, compressed=struct.pack("<I", 1 << 30) + b"\0"),
    ),
    "bad_compression": (
        "bad_compression",
        lambda link, seq: link.seal(b"", seq - 1, compressed=struct.pack("<I", 64) + b"\xff" * 8),
    ),
    "bad_protobuf": ("bad_protobuf", _bad_protobuf),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_is_counted_and_the_receiver_keeps_serving(link: Link, case: str) -> None:
    reason, build = BAD_FRAMES[case]
    first = link.good()
    raw = link.raw_push()

    raw.send(build(link, first.seq))
    _drain_until_rejected(link.receiver, reason, 1)

    second = link.good()
    assert second.seq == first.seq + 1
    assert link.receiver.counters.rejected == Counter({reason: 1})
    assert link.receiver.counters.received == 2
    assert link.receiver.recv(timeout_ms=SILENCE_MS) is None


def test_replayed_frame_is_refused(link: Link) -> None:
    first = link.good()
    raw = link.raw_push()
    captured = _batch(50)
    # Sealed with the sender's own session key, just behind its newest frame (unseen).
    data = link.seal(captured.SerializeToString(), first.seq - 1)

    raw.send(data)
    got = link.receiver.recv(timeout_ms=EXPECT_MS)
    assert got is not None
    assert got.message == captured
    assert (got.peer_id, got.seq) == (SENSOR, first.seq - 1)

    raw.send(data)
    _drain_until_rejected(link.receiver, "replay", 1)

    link.good()
    assert link.receiver.counters.rejected == Counter({"replay": 1})
    assert link.receiver.counters.received == 3


def test_frame_sealed_with_an_expired_key_is_refused(link: Link) -> None:
    first = link.good()
    old_key = link.s_ring.sending_key(DETECTOR)
    new = KeyPair.generate()
    link.s_ring.rotate_own(new)
    link.r_ring.add_peer(SENSOR, new.public)
    link.good()  # sealed with the new key
    raw = link.raw_push()

    # Within the grace period a frame under the old key is still accepted ...
    raw.send(link.seal(_batch(60).SerializeToString(), first.seq + 1, key=old_key))
    got = link.receiver.recv(timeout_ms=EXPECT_MS)
    assert got is not None
    assert got.message == _batch(60)

    # ... and after it, refused as expired (not as unknown).
    link.clock.advance(GRACE_S)
    raw.send(link.seal(_batch(61).SerializeToString(), first.seq + 2, key=old_key))
    _drain_until_rejected(link.receiver, "expired_key", 1)

    link.good()
    assert link.receiver.counters.rejected == Counter({"expired_key": 1})
    assert link.receiver.counters.received == 4


def test_frame_larger_than_max_frame_bytes_is_refused_unread(make_link: LinkFactory) -> None:
    """transport.max_frame_bytes: 'bigger ones are rejected unread' (ZMQ_MAXMSGSIZE)."""
    link = make_link(max_frame_bytes=4096)
    first = link.good()
    raw = link.raw_push()
    # A correctly sealed frame, only too big: if it gets through, it is accepted.
    big = FlowBatch(sensor_id=SENSOR, records=[FlowRecord(src_addr=os.urandom(20_000))])
    data = link.seal(big.SerializeToString(), first.seq - 1)
    assert len(data) > 4096

    raw.send(data)
    got = link.receiver.recv(timeout_ms=SILENCE_MS)
    if got is not None:
        pytest.fail(f"a {len(data)}-byte frame got past max_frame_bytes=4096 and was accepted")

    link.good()
    assert link.receiver.counters.received == 2


# --- rejection logging -----------------------------------------------------------------


def test_rejections_are_logged_once_per_peer_and_reason(
    make_link: LinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crypto_transport.channel")
    link = make_link(reject_log_interval_s=3600.0)
    first = link.good()
    raw = link.raw_push()
    bad = _tampered(link, first.seq)

    for _ in range(5):
        raw.send(bad)
    _drain_until_rejected(link.receiver, "bad_tag", 5)

    def lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "crypto_transport.channel" and "rejected frame" in r.getMessage()
        ]

    assert len(lines()) == 1
    assert lines()[0].startswith(f"{CHANNEL}: rejected frame from {SENSOR}: authentication")
    assert all(r.levelno == logging.WARNING for r in caplog.records)

    # Another reason is reported on its own line.
    raw.send(b"\x01\x02")
    _drain_until_rejected(link.receiver, "truncated", 1)
    assert len(lines()) == 2
    assert f"at least {frame.OVERHEAD}" in lines()[1]

    link.good()
    assert link.receiver.counters.rejected == Counter({"bad_tag": 5, "truncated": 1})


def test_reject_log_reports_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="test.rejects")
    clock = FakeClock()
    log = RejectLog(logging.getLogger("test.rejects"), 60.0, clock=clock)

    assert log("flows", "sensor-1", "bad_tag", "detail") is True
    assert [log("flows", "sensor-1", "bad_tag", "detail") for _ in range(4)] == [False] * 4
    # Another peer with the same reason is not held back.
    assert log("flows", "sensor-2", "bad_tag", "detail") is True
    clock.advance(59.9)
    assert log("flows", "sensor-1", "bad_tag", "detail") is False
    clock.advance(0.1)
    assert log("flows", "sensor-1", "bad_tag", "detail") is True

    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "flows: rejected frame from sensor-1: detail",
        "flows: rejected frame from sensor-2: detail",
        "flows: rejected frame from sensor-1: detail (5 more since the last report)",
    ]


# --- PUB/SUB ---------------------------------------------------------------------------


@dataclass
class PubSub:
    publisher: Sender
    subs: dict[str, Receiver[VerdictBatch]]
    p_ring: Keyring
    s_rings: dict[str, Keyring]


def _pub_sub(
    ctx: zmq.Context[zmq.Socket[bytes]],
    closing: list[Any],
    endpoint: str,
    settings: TransportConfig,
    names: list[str],
) -> PubSub:
    pub_kp = KeyPair.generate()
    p_ring = Keyring(pub_kp, grace_s=GRACE_S)
    s_rings = {}
    for name in names:
        kp = KeyPair.generate()
        p_ring.add_peer(name, kp.public)
        s_rings[name] = Keyring(kp, grace_s=GRACE_S)
        s_rings[name].add_peer("detector-1", pub_kp.public, roles=["detector"])
    publisher = Sender(
        pattern="pub",
        endpoint=endpoint,
        channel="verdicts",
        sender_id="detector-1",
        keyring=p_ring,
        recipients=names,
        settings=settings,
        context=ctx,
    )
    closing.append(publisher)
    subs: dict[str, Receiver[VerdictBatch]] = {}
    for name in names:
        subs[name] = Receiver(
            pattern="sub",
            endpoint=endpoint,
            channel="verdicts",
            keyring=s_rings[name],
            message_type=VerdictBatch,
            settings=settings,
            context=ctx,
        )
        closing.append(subs[name])
    assert publisher.wait_for_subscribers(len(names), 5.0) == len(names)
    return PubSub(publisher, subs, p_ring, s_rings)


def _verdicts(n: int) -> VerdictBatch:
    return VerdictBatch(detector_id="detector-1", batch_seq=n)


def test_pub_sub_each_subscriber_gets_only_its_own_frames(
    zctx: zmq.Context[zmq.Socket[bytes]], closing: list[Any], tmp_path: Path
) -> None:
    ps = _pub_sub(zctx, closing, _ipc_endpoint(tmp_path, "pub"), _settings(), ["fw-a", "fw-b"])
    for n in range(3):
        assert ps.publisher.send(_verdicts(n))
    assert ps.publisher.counters.sent == 6  # one frame per subscriber per batch

    seqs = {}
    for name, sub in ps.subs.items():
        got = [sub.recv(timeout_ms=EXPECT_MS) for _ in range(3)]
        assert all(g is not None for g in got), name
        assert [g.message for g in got if g] == [_verdicts(n) for n in range(3)]
        assert {g.peer_id for g in got if g} == {"detector-1"}
        seqs[name] = [g.seq for g in got if g]
        assert sub.recv(timeout_ms=SILENCE_MS) is None
        assert sub.counters.received == 3
        assert not sub.counters.rejected, (name, dict(sub.counters.rejected))
    # The same batch carries the same sequence number in every subscriber's frame.
    assert seqs["fw-a"] == seqs["fw-b"]


def test_pub_drops_for_a_full_subscriber_are_counted_as_missing_by_it(
    zctx: zmq.Context[zmq.Socket[bytes]], closing: list[Any], tmp_path: Path
) -> None:
    """A PUB never waits for a subscriber at its high-water mark: that subscriber loses
    frames, and counts them as missing once a later frame arrives."""
    settings = _settings(send_hwm=10, recv_hwm=10)
    ps = _pub_sub(zctx, closing, _ipc_endpoint(tmp_path, "hwm"), settings, ["fw-a"])
    sub = ps.subs["fw-a"]
    # Incompressible records, so the queues and socket buffers fill quickly.
    batch = FlowBatch(records=[FlowRecord(src_addr=os.urandom(4096))])
    attempts = 2000

    results = [ps.publisher.send(batch) for _ in range(attempts)]

    c = ps.publisher.counters
    assert all(results) and c.sent == attempts and not c.dropped
    received = 0
    while sub.recv(timeout_ms=500) is not None:
        received += 1
    assert 0 < received < attempts
    assert ps.publisher.send(batch)
    assert sub.recv(timeout_ms=EXPECT_MS) is not None
    # Nothing silent: every frame it did not get is counted by the subscriber.
    assert sub.counters.missing == attempts - received
    assert not sub.counters.rejected


def test_pub_send_hwm_setting_is_applied(
    zctx: zmq.Context[zmq.Socket[bytes]], closing: list[Any], tmp_path: Path
) -> None:
    """With send_hwm = recv_hwm = 10 a subscriber that does not read holds about 20 frames
    (plus what the kernel buffers), not ZeroMQ's default of 1000."""
    settings = _settings(send_hwm=10, recv_hwm=10)
    ps = _pub_sub(zctx, closing, _ipc_endpoint(tmp_path, "hwm"), settings, ["fw-a"])
    batch = FlowBatch(records=[FlowRecord(src_addr=os.urandom(64 * 1024))])

    for _ in range(1200):
        ps.publisher.send(batch)

    # 64 KiB frames: the socket buffers hold only a handful of them.
    held = 0
    while ps.subs["fw-a"].recv(timeout_ms=500) is not None:
        held += 1
    assert 0 < held <= 100, held


def test_push_without_a_peer_times_out_and_counts_the_drop(
    zctx: zmq.Context[zmq.Socket[bytes]], closing: list[Any], tmp_path: Path
) -> None:
    own, peer = KeyPair.generate(), KeyPair.generate()
    ring = Keyring(own, grace_s=GRACE_S)
    ring.add_peer(DETECTOR, peer.public)
    sender = Sender(
        pattern="push",
        endpoint=_ipc_endpoint(tmp_path, "lonely"),
        channel=CHANNEL,
        sender_id=SENSOR,
        keyring=ring,
        recipients=[DETECTOR],
        settings=_settings(send_timeout_ms=100),
        bind=True,  # nobody connects
        context=zctx,
    )
    closing.append(sender)

    t0 = time.monotonic()
    ok = sender.send(_batch(1))
    elapsed = time.monotonic() - t0

    assert ok is False
    assert 0.09 <= elapsed < 1.5
    assert sender.counters.dropped == Counter({"timeout": 1})
    assert sender.counters.sent == 0
    assert sender.counters.snapshot()["dropped.timeout"] == 1


# --- rotation over sockets -------------------------------------------------------------


def test_sender_rotation_loses_no_frames(link: Link) -> None:
    before = [_batch(n) for n in range(1, 4)]
    for b in before:
        assert link.sender.send(b)
    old_kid = link.s_ring.sending_key(DETECTOR).key_id

    # The sender switches key pairs while its old frames may still be in flight; the
    # receiver learns the new public key (the old one stays accepted for the grace).
    new = KeyPair.generate()
    link.s_ring.rotate_own(new)
    link.r_ring.add_peer(SENSOR, new.public)
    assert link.s_ring.sending_key(DETECTOR).key_id != old_kid

    after = [_batch(n) for n in range(4, 7)]
    for b in after:
        assert link.sender.send(b)

    got = [link.receiver.recv(timeout_ms=EXPECT_MS) for _ in range(6)]
    assert [g.message if g else None for g in got] == before + after
    assert not link.receiver.counters.rejected
    assert link.receiver.counters.missing == 0
    assert link.receiver.recv(timeout_ms=SILENCE_MS) is None


def test_receiver_rotation_loses_no_frames(link: Link) -> None:
    link.good()
    new = KeyPair.generate()
    link.r_ring.rotate_own(new)
    # The sender has not heard yet: its frames use the old key, still in grace.
    link.good()
    link.s_ring.add_peer(DETECTOR, new.public)
    link.good()
    assert not link.receiver.counters.rejected
    # Once the grace has passed, only the new key works, and the sender uses it.
    link.clock.advance(GRACE_S)
    link.good()
    assert not link.receiver.counters.rejected


def test_subscriber_rotation_resubscribes(
    zctx: zmq.Context[zmq.Socket[bytes]], closing: list[Any], tmp_path: Path
) -> None:
    ps = _pub_sub(zctx, closing, _ipc_endpoint(tmp_path, "rot"), _settings(), ["fw-a"])
    sub, ring = ps.subs["fw-a"], ps.s_rings["fw-a"]
    assert ps.publisher.send(_verdicts(1))
    got = sub.recv(timeout_ms=EXPECT_MS)
    assert got is not None

    new = KeyPair.generate()
    ring.rotate_own(new)
    # Old-key frames are still subscribed to and accepted during the grace.
    assert ps.publisher.send(_verdicts(2))
    got = sub.recv(timeout_ms=EXPECT_MS)  # also subscribes to the new key id
    assert got is not None
    assert got.message == _verdicts(2)
    assert ps.publisher.wait_for_subscribers(1, 5.0) == 1

    ps.p_ring.add_peer("fw-a", new.public)
    assert ps.publisher.send(_verdicts(3))
    got = sub.recv(timeout_ms=EXPECT_MS)
    assert got is not None
    assert got.message == _verdicts(3)
    assert not sub.counters.rejected


# --- configuration errors --------------------------------------------------------------


def _sender(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, **kw: Any) -> Sender:
    ring = Keyring(KeyPair.generate(), grace_s=GRACE_S)
    for peer in ("a", "b"):
        ring.add_peer(peer, KeyPair.generate().public)
    args: dict[str, Any] = {
        "pattern": "push",
        "endpoint": endpoint,
        "channel": CHANNEL,
        "sender_id": SENSOR,
        "keyring": ring,
        "recipients": ["a"],
        "settings": _settings(),
        "context": ctx,
    }
    args.update(kw)
    return Sender(**args)


def test_push_sender_with_two_recipients_is_refused(
    zctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    with pytest.raises(TransportError, match="got 2 recipients; use pattern 'pub'"):
        _sender(zctx, _ipc_endpoint(tmp_path, "x"), recipients=["a", "b"])


def test_sender_with_unknown_recipient_is_refused(
    zctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    with pytest.raises(TransportError, match="'firewall-7'"):
        _sender(zctx, _ipc_endpoint(tmp_path, "x"), recipients=["firewall-7"])
    with pytest.raises(TransportError, match="'firewall-7'"):
        _sender(zctx, _ipc_endpoint(tmp_path, "x"), pattern="pub", recipients=["a", "firewall-7"])


def test_sender_without_recipients_is_refused(
    zctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    with pytest.raises(TransportError, match="at least one recipient"):
        _sender(zctx, _ipc_endpoint(tmp_path, "x"), recipients=[])


def test_wait_for_subscribers_is_for_pub_only(link: Link) -> None:
    with pytest.raises(TransportError, match="PUB"):
        link.sender.wait_for_subscribers(1, 0.1)


def test_second_bind_to_an_endpoint_is_a_transport_error(link: Link) -> None:
    with pytest.raises(TransportError, match="another process bound"):
        Receiver(
            pattern="pull",
            endpoint=_tcp_endpoint_bound_by(link),
            channel=CHANNEL,
            keyring=link.r_ring,
            message_type=FlowBatch,
            settings=link.settings,
            context=link.ctx,
        )


def _tcp_endpoint_bound_by(link: Link) -> str:
    """A tcp endpoint already bound by a receiver of ``link``'s context."""
    endpoint = _tcp_endpoint()
    receiver: Receiver[FlowBatch] = Receiver(
        pattern="pull",
        endpoint=endpoint,
        channel=CHANNEL,
        keyring=link.r_ring,
        message_type=FlowBatch,
        settings=link.settings,
        context=link.ctx,
    )
    link.closing.append(receiver)
    return endpoint
