"""Encrypted ZeroMQ channels: a Sender (PUSH or PUB) and a Receiver (PULL or SUB).

A channel has a name ("flows", "verdicts", ...) that both ends agree on; it is bound into
every frame's associated data. A sender seals each batch once per recipient (its key), so:

* PUSH/PULL carries batches to one receiving service (the sender names one recipient);
* PUB/SUB carries the same batches to several subscribers, one frame each. Subscribers
  subscribe to the prefix ``version | key id`` of the keys they accept, so ZeroMQ hands each
  one only its own frames.

Nothing is dropped silently: a PUSH that finds no room within ``send_timeout_ms`` counts
the batch under ``dropped``. A PUB never waits for a subscriber: one whose queue is full
(``send_hwm``) loses its own frames, which it counts under ``missing`` when a later frame
arrives (sequence numbers), and the other subscribers are not held up, so one subscriber
that never reads (a squatter on the endpoint) cannot stop verdicts reaching the others.
A receiver counts every refused frame under ``rejected`` by reason, logs it at most once
per peer per interval, and goes on with the next frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

import zmq
from google.protobuf.message import DecodeError, Message

from base.errors import FrameRejected, TransportError
from crypto_transport.config import TransportConfig
from crypto_transport.counters import ChannelCounters, RejectLog
from crypto_transport.curve import Admission, Redial, curve_client, curve_server
from crypto_transport.frame import (
    FRAME_VERSION,
    compress,
    open_payload,
    parse_header,
    peek_key_id,
    seal,
)
from crypto_transport.keys import ROLES, Keyring
from crypto_transport.replay import ReplayState, ReplayWindow

__all__ = ["Received", "Receiver", "Sender"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
ZmqContext = zmq.Context[zmq.Socket[bytes]]
# Longest a receive waits without letting a Redial retry a refused handshake.
_REDIAL_POLL_MS = 250


def _zmq_error(what: str, endpoint: str, exc: zmq.ZMQError, hint: str = "") -> TransportError:
    return TransportError(f"cannot {what} {endpoint}: {exc.strerror}{hint}")


def _open_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    endpoint: str,
    bind: bool,
    options: dict[zmq.SocketOption, int],
    secure: Callable[[zmq.Socket[bytes]], Admission | None],
    curve: bool,
    deferred: Callable[[], bool] = lambda: False,
) -> tuple[zmq.Socket[bytes], Admission | None, Redial | None]:
    """A bound or connected socket, made a CURVE server or client by ``secure`` first;
    returns the socket, its ZAP admission if it is a server (release it at close) and,
    if it connects with CURVE, the Redial that retries a refused handshake. When
    ``deferred()`` says so after ``secure`` the socket is returned neither bound nor
    connected (see :func:`_attach`)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 1000)
    # libzmq copies most options when the socket binds or connects: set them first.
    for option, value in options.items():
        sock.setsockopt(option, value)
    admission = None
    redial = None
    try:
        admission = secure(sock)
        if not deferred():
            redial = _attach(sock, endpoint, bind, curve)
    except BaseException as exc:
        if redial is not None:
            redial.close()
        sock.close(linger=0)
        if admission is not None:
            admission.release()
        if isinstance(exc, zmq.ZMQError):
            hint = " (is another process bound to it?)" if exc.errno == zmq.EADDRINUSE else ""
            raise _zmq_error("bind" if bind else "connect", endpoint, exc, hint) from exc
        raise
    return sock, admission, redial


def _attach(sock: zmq.Socket[bytes], endpoint: str, bind: bool, curve: bool) -> Redial | None:
    """Bind or connect ``sock``; a connecting CURVE socket gets its Redial first."""
    if bind:
        sock.bind(endpoint)
        return None
    redial = Redial(sock, endpoint) if curve else None
    try:
        sock.connect(endpoint)
    except BaseException:
        if redial is not None:
            redial.close()
        raise
    return redial


class Sender:
    """Seals protobuf batches and sends them on a PUSH or PUB socket."""

    def __init__(
        self,
        *,
        pattern: Literal["push", "pub"],
        endpoint: str,
        channel: str,
        sender_id: str,
        keyring: Keyring,
        recipients: Sequence[str],
        settings: TransportConfig,
        bind: bool | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        immediate: bool = False,
    ) -> None:
        """``immediate`` (ZMQ_IMMEDIATE): queue frames only on completed connections, so
        a PUSH to a receiver that went away waits and counts the batch as dropped instead
        of queueing it for a peer that may never come back."""
        if not recipients:
            raise TransportError(f"channel {channel!r}: a sender needs at least one recipient")
        if pattern == "push" and len(recipients) != 1:
            raise TransportError(
                f"channel {channel!r}: a PUSH sender seals for one receiving service, "
                f"got {len(recipients)} recipients; use pattern 'pub' to reach several"
            )
        for peer in recipients:
            keyring.sending_key(peer)  # fails early, naming the peer with no key
        self.channel = channel
        self.endpoint = endpoint
        self.counters = ChannelCounters()
        self._channel_b = channel.encode()
        self._sender_b = sender_id.encode()
        self._keyring = keyring
        self._recipients = list(recipients)
        self._settings = settings
        self._pub = pattern == "pub"
        # Wall-clock start: a restarted sender numbers its frames above the old ones.
        self._seq = time.time_ns()
        context = context or zmq.Context.instance()
        kind = zmq.XPUB if self._pub else zmq.PUSH
        options = {zmq.SNDHWM: settings.send_hwm}
        if not self._pub:
            options[zmq.SNDTIMEO] = settings.send_timeout_ms
        # A PUB drops for a subscriber at its high-water mark and goes on with the others
        # (no XPUB_NODROP: with it one subscriber that never reads failed every publish).
        if immediate:
            options[zmq.IMMEDIATE] = 1
        self._sock, self._admission, self._redial = _open_socket(
            context,
            kind,
            endpoint,
            self._pub if bind is None else bind,
            options,
            lambda sock: self._secure(sock, context),
            settings.curve,
        )

    def _secure(self, sock: zmq.Socket[bytes], context: ZmqContext) -> Admission | None:
        """CURVE: a PUB admits its recipients; a PUSH is a client of its recipient."""
        if not self._settings.curve:
            return None
        own = self._keyring.own
        if self._pub:
            recipients = frozenset(self._recipients)
            keyring = self._keyring

            def admit(public: bytes) -> str | None:
                peer = keyring.peer_with_public(public)
                if peer in recipients:
                    return peer
                self.counters.refused_connections += 1
                return None

            return curve_server(sock, context, own.private, admit)
        server = self._keyring.peers[self._recipients[0]]
        curve_client(sock, public=own.public, secret=own.private, server_public=server)
        return None

    def maintain(self) -> None:
        """Connect again after a refused CURVE handshake once its wait is over. Sending
        does this too; a sender that may stay idle (nothing to send for minutes) calls it
        so that its first batch after the wait does not meet a refused connection."""
        if self._redial is not None:
            self._redial.check()

    def send(self, message: Message) -> bool:
        """Serialize, compress, seal and send one batch; False if it was dropped (counted)."""
        return self.send_payload(message.SerializeToString())

    def send_payload(self, payload: bytes) -> bool:
        """Send an already serialized batch."""
        if self._redial is not None:
            self._redial.check()
        self._seq += 1
        seq = self._seq
        compressed = compress(payload, self._settings.lz4_acceleration)
        ok = True
        for peer in self._recipients:
            key = self._keyring.sending_key(peer)
            frame = seal(
                payload,
                key=key.key,
                key_id=key.key_id,
                seq=seq,
                channel=self._channel_b,
                sender_id=self._sender_b,
                compressed=compressed,
            )
            ok = self._send_frame(frame) and ok
        return ok

    def _send_frame(self, frame: bytes) -> bool:
        try:
            self._sock.send(frame, zmq.NOBLOCK if self._pub else 0)
        except zmq.Again:
            self.counters.dropped["timeout"] += 1
            return False
        except zmq.ZMQError as exc:
            raise _zmq_error("send on", self.endpoint, exc) from exc
        self.counters.sent += 1
        self.counters.sent_bytes += len(frame)
        return True

    def wait_for_subscribers(self, count: int, timeout_s: float) -> int:
        """PUB only: wait until ``count`` subscriptions arrived (ZeroMQ's slow joiner);
        returns how many did."""
        if not self._pub:
            raise TransportError("wait_for_subscribers is for PUB senders")
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < count:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._sock.poll(left_ms, zmq.POLLIN):
                break
            if self._sock.recv()[:1] == b"\x01":
                seen += 1
        return seen

    @property
    def bound_endpoint(self) -> str:
        """The endpoint as ZeroMQ resolved it (the real port of a ``tcp://host:*`` bind);
        the configured endpoint for a connecting socket."""
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) and last else self.endpoint

    def close(self) -> None:
        if self._redial is not None:
            self._redial.close()
            self._redial = None
        self._sock.close()
        if self._admission is not None:
            self._admission.release()
            self._admission = None

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Received(Generic[M]):
    """One accepted batch and where it came from."""

    message: M
    peer_id: str
    seq: int


class Receiver(Generic[M]):
    """Receives frames on a PULL or SUB socket and returns the batches that pass every check."""

    def __init__(
        self,
        *,
        pattern: Literal["pull", "sub"],
        endpoint: str,
        channel: str,
        keyring: Keyring,
        message_type: type[M],
        settings: TransportConfig,
        bind: bool | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        senders: Collection[str] | None = None,
        replay_state: str | Path | None = None,
        publisher: str | None = None,
    ) -> None:
        """``senders``: the roles that may send on this channel; None takes them from
        ``settings.channel_senders`` (TransportError when the channel is not there).
        ``replay_state``: file keeping the newest sequence number per key across
        restarts (replay.replay_state_path); None keeps them in memory only.
        ``publisher`` (SUB): the peer whose PUB it connects to; None: the one peer whose
        role may send on the channel."""
        if senders is None:
            senders = settings.channel_senders.get(channel)
            if senders is None:
                raise TransportError(
                    f"channel {channel!r}: transport.channel_senders does not say which roles "
                    f"may send on it; add `{channel}: [ROLE]` there (roles: {', '.join(ROLES)})"
                )
        self.senders = frozenset(senders)
        self.channel = channel
        self.endpoint = endpoint
        self.counters = ChannelCounters()
        self._channel_b = channel.encode()
        self._keyring = keyring
        self._type = message_type
        self._settings = settings
        self._sub = pattern == "sub"
        self._windows: dict[bytes, ReplayWindow] = {}
        self._state = ReplayState(replay_state) if replay_state is not None else None
        # Newest numbers restored from the state file, per key id not yet seen again.
        self._restored = self._state.load() if self._state is not None else {}
        self._state_dirty = False
        self._subscribed: set[bytes] = set()
        self._generation = -1
        self._reject_log = RejectLog(log, settings.reject_log_interval_s)
        context = context or zmq.Context.instance()
        kind = zmq.SUB if self._sub else zmq.PULL
        options = {
            zmq.RCVHWM: settings.recv_hwm,
            # ZeroMQ itself refuses (and disconnects) a peer sending a larger message.
            zmq.MAXMSGSIZE: settings.max_frame_bytes,
        }
        self._publisher = publisher
        # A SUB whose publisher's key is not known yet (it comes from etcd) is opened
        # but not bound or connected until it is (_attach_when_known, on every recv).
        self._deferred = False
        self._bind = (not self._sub) if bind is None else bind
        self._sock, self._admission, self._redial = _open_socket(
            context,
            kind,
            endpoint,
            self._bind,
            options,
            lambda sock: self._secure(sock, context),
            settings.curve,
            lambda: self._deferred,
        )
        self.refresh_subscriptions()

    def _secure(self, sock: zmq.Socket[bytes], context: ZmqContext) -> Admission | None:
        """CURVE: a PULL admits the peers whose role may send here; a SUB is a client of
        its publisher."""
        if not self._settings.curve:
            return None
        own = self._keyring.own
        keyring, senders = self._keyring, self.senders
        if not self._sub:

            def admit(public: bytes) -> str | None:
                peer = keyring.peer_with_public(public)
                if peer is not None and keyring.roles_of(peer) & senders:
                    return peer
                self.counters.refused_connections += 1
                return None

            return curve_server(sock, context, own.private, admit)
        server = self._publisher_key()
        if server is None:
            self._deferred = True
            log.info(
                "%s: waiting for the publisher's key before connecting to %s",
                self.channel,
                self.endpoint,
            )
        else:
            curve_client(sock, public=own.public, secret=own.private, server_public=server)
        return None

    def _publisher_key(self) -> bytes | None:
        """SUB: the CURVE key of the peer it subscribes to (``publisher``, else the one
        peer whose role may send here); None while no such peer is known yet."""
        keyring = self._keyring
        publisher = self._publisher
        if publisher is None:
            candidates = sorted(p for p in keyring.peers if keyring.roles_of(p) & self.senders)
            if len(candidates) > 1:
                raise TransportError(
                    f"channel {self.channel!r}: a SUB receiver connects to one publisher, and "
                    f"{len(candidates)} peers may publish here ({', '.join(candidates)}); keep "
                    "only the publisher's key among the peers of those roles"
                )
            if not candidates:
                return None
            publisher = candidates[0]
        return keyring.peers.get(publisher)

    def _attach_when_known(self) -> None:
        """A deferred SUB: connect (or bind) once its publisher's key is known."""
        server = self._publisher_key()
        if server is None:
            return
        own = self._keyring.own
        curve_client(self._sock, public=own.public, secret=own.private, server_public=server)
        try:
            self._redial = _attach(self._sock, self.endpoint, self._bind, True)
        except zmq.ZMQError as exc:
            raise _zmq_error("bind" if self._bind else "connect", self.endpoint, exc) from exc
        self._deferred = False
        log.info("%s: publisher's key known, connected to %s", self.channel, self.endpoint)

    def refresh_subscriptions(self) -> None:
        """SUB only: subscribe to the key ids the keyring accepts now (call after a rotation)."""
        if not self._sub:
            return
        self._generation = self._keyring.generation
        wanted = {bytes([FRAME_VERSION]) + kid for kid in self._keyring.accepted_key_ids()}
        for prefix in wanted - self._subscribed:
            self._sock.setsockopt(zmq.SUBSCRIBE, prefix)
        for prefix in self._subscribed - wanted:
            self._sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
        self._subscribed = wanted

    def recv(self, timeout_ms: int | None = None) -> Received[M] | None:
        """The next batch that passes every check, or None when ``timeout_ms`` passes first
        (None waits for ever). Refused frames are counted and skipped."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            if self._deferred:
                # (Roles can arrive without the keyring's generation changing.)
                self._attach_when_known()
            if self._sub and self._generation != self._keyring.generation:
                self.refresh_subscriptions()
            if self._redial is not None:
                self._redial.check()
            waking = self._redial is not None or self._deferred
            if deadline is not None or waking:
                # With a Redial or a deferred connect, wake at least every
                # _REDIAL_POLL_MS to let them act.
                left_ms = _REDIAL_POLL_MS
                if deadline is not None:
                    left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                    if waking:
                        left_ms = min(left_ms, _REDIAL_POLL_MS)
                if not self._sock.poll(left_ms, zmq.POLLIN):
                    # Quiet: write what the last accepted frames left unsaved.
                    self._persist(force=False)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
            try:
                zframe = self._sock.recv(copy=False)
            except zmq.ZMQError as exc:
                raise _zmq_error("receive on", self.endpoint, exc) from exc
            data = zframe.bytes
            try:
                return self.open(data)
            except FrameRejected as rej:
                self._reject(rej, data, zframe)

    def open(self, data: bytes) -> Received[M]:
        """Run every check on one frame; raise FrameRejected (not yet counted) on failure."""
        key_id, seq, nonce = parse_header(data)
        key = self._keyring.receiving_key(key_id)
        if key is None:
            if self._keyring.is_known_expired(key_id):
                raise FrameRejected(
                    "expired_key", f"key id {key_id.hex()} was rotated out and its grace ended"
                )
            raise FrameRejected(
                "unknown_key",
                f"key id {key_id.hex()} matches no peer in transport.peers "
                "(unknown sender, or a key this node has not learnt yet)",
            )
        window = self._windows.get(key_id)
        if window is None:
            size = self._settings.replay_window
            stored = self._restored.pop(key_id, None)
            window = ReplayWindow(size) if stored is None else ReplayWindow.restored(size, stored)
            self._windows[key_id] = window
        reason = window.check(seq)
        if reason is not None:
            raise FrameRejected(
                reason, f"sequence {seq} from {key.peer_id}; newest seen is {window.newest}"
            )
        payload = open_payload(
            data,
            key=key.key,
            nonce=nonce,
            channel=self._channel_b,
            sender_id=key.peer_id.encode(),
            max_decompressed=self._settings.max_decompressed_bytes,
        )
        # Authentic, so the key really is this peer's: may its role send here?
        if not self._keyring.roles_of(key.peer_id) & self.senders:
            roles = ", ".join(sorted(self._keyring.roles_of(key.peer_id))) or "no role"
            raise FrameRejected(
                "unauthorized_role",
                f"{key.peer_id} ({roles}) may not send on {self.channel!r}; only "
                f"{', '.join(sorted(self.senders))} may (transport.channel_senders)",
            )
        # Authentic and allowed: only now may it move the window.
        self.counters.missing += window.accept(seq)
        if self._state is not None:
            self._state_dirty = True
            self._persist(force=False)
        try:
            message = self._type.FromString(payload)
        except DecodeError as exc:
            raise FrameRejected(
                "bad_protobuf",
                f"authentic frame from {key.peer_id} is not a {self._type.__name__}: {exc}",
            ) from None
        self.counters.received += 1
        self.counters.received_bytes += len(data)
        return Received(message, key.peer_id, seq)

    def _reject(self, rej: FrameRejected, data: bytes, zframe: zmq.Frame) -> None:
        self.counters.rejected[rej.reason] += 1
        self._reject_log(self.channel, self._peer_name(data, zframe), rej.reason, rej.detail)

    def _peer_name(self, data: bytes, zframe: zmq.Frame) -> str:
        key_id = peek_key_id(data)
        key = self._keyring.receiving_key(key_id) if key_id is not None else None
        if key is not None:
            return key.peer_id
        try:
            address = zframe.get("Peer-Address")
        except zmq.ZMQError:
            address = ""
        return str(address) if address else "unknown peer"

    @property
    def bound_endpoint(self) -> str:
        """The endpoint as ZeroMQ resolved it (the real port of a ``tcp://host:*`` bind);
        the configured endpoint for a connecting socket."""
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) and last else self.endpoint

    def _persist(self, *, force: bool) -> None:
        """Write the newest number per key (at most once a second unless ``force``); a
        failure is logged and counted (``replay_state_errors``), the receiver goes on."""
        if self._state is None or not self._state_dirty:
            return
        newest = dict(self._restored)
        newest.update({k: w.newest for k, w in self._windows.items() if w.newest is not None})
        try:
            if force:
                self._state.save(newest)
                saved = True
            else:
                saved = self._state.maybe_save(newest)
        except OSError as exc:
            self.counters.replay_state_errors += 1
            log.warning(
                "%s: cannot save the replay state %s: %s (recorded frames could be accepted "
                "again after a restart)",
                self.channel,
                self._state.path,
                exc.strerror or exc,
            )
            return
        if saved:
            self._state_dirty = False

    def close(self) -> None:
        self._persist(force=True)
        if self._redial is not None:
            self._redial.close()
            self._redial = None
        self._sock.close()
        if self._admission is not None:
            self._admission.release()
            self._admission = None

    def __enter__(self) -> Receiver[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
