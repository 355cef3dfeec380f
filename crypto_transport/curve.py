"""ZeroMQ CURVE on every channel socket, and the ZAP handler that admits only known peers.

The frames are sealed end to end (frame.py), so CURVE adds no secrecy; it decides who may
hold a connection at all. Without it anyone who reaches an endpoint could connect, fill
a PULL's queue with junk the receiver must read and refuse, or squat on a PUB endpoint.

CURVE keys are Curve25519 keys, the X25519 keys of the transport: a node's key pair is
its CURVE key pair, and a peer's public key from ``transport.peers`` or the key
directory is its CURVE public key, so nothing new is configured or distributed.

* a PULL receiver and a PUB sender are CURVE servers: the ZAP handler admits a client
  only if its key is the key of a peer allowed there (a PULL: a peer whose role may
  send on the channel; a PUB: one of its recipients);
* a PUSH sender and a SUB receiver are CURVE clients of the one peer they talk to.

A key is read when a connection is made: after a node replaces its own key pair, its
sockets keep the old one until they are opened again (a restart); established
connections go on, and peers' new keys are admitted at once. ZeroMQ gives up on a connection whose
handshake was refused; :class:`Redial` makes a connecting socket try again (a sender
may connect before the receiver has learnt its key from etcd).

ZeroMQ asks a ZAP handler bound to ``inproc://zeromq.zap.01`` in the socket's context
(RFC 27). One handler thread serves every socket of a context; each socket names its
own ZAP domain, and the handler asks that socket's admission function. The thread stops
when the last socket of its context is closed.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable

import zmq

from base.errors import TransportError

__all__ = ["ZAP_ENDPOINT", "Admission", "Redial", "curve_client", "curve_server"]

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"
_POLL_MS = 1000
_REFUSAL_LOG_S = 60.0

ZmqContext = zmq.Context[zmq.Socket[bytes]]
# Given a client's CURVE public key (32 bytes), the peer it is, or None to refuse.
Admit = Callable[[bytes], "str | None"]


class _Handler:
    """The ZAP handler thread of one context."""

    def __init__(self, context: ZmqContext) -> None:
        self.domains: dict[str, Admit] = {}
        self._refusals: dict[bytes, float] = {}
        self._context = context
        self._stop_endpoint = f"inproc://mld-zap-stop-{id(self)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mld-zap", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise TransportError(
                f"cannot start the ZAP handler on {ZAP_ENDPOINT}: {self._error} (is another "
                "authenticator bound in this ZeroMQ context?)"
            )

    def _run(self) -> None:
        try:
            zap = self._context.socket(zmq.REP)
            stop = self._context.socket(zmq.PAIR)
            zap.setsockopt(zmq.LINGER, 0)
            stop.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
            stop.bind(self._stop_endpoint)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(_POLL_MS))
                if stop in events:
                    return
                if zap in events:
                    zap.send_multipart(self._answer(zap.recv_multipart()))
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.error("ZAP handler stopped: %s", exc)
        finally:
            zap.close(linger=0)
            stop.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        # version, request id, domain, address, identity, mechanism, credentials...
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            request_id = request[1] if len(request) > 1 else b""
            return [_ZAP_VERSION, request_id, b"500", b"malformed ZAP request", b"", b""]
        request_id, domain, address, mechanism = request[1], request[2], request[3], request[5]
        admit = self.domains.get(domain.decode(errors="replace"))
        if admit is None:
            return [_ZAP_VERSION, request_id, b"400", b"unknown domain", b"", b""]
        if mechanism != b"CURVE" or len(request) < 7 or len(request[6]) != 32:
            return [_ZAP_VERSION, request_id, b"400", b"CURVE required", b"", b""]
        try:
            peer = admit(request[6])
        except Exception:  # a bug here must not stop every future handshake
            log.exception("ZAP admission check failed")
            peer = None
        if peer is None:
            self._log_refusal(request[6], address.decode(errors="replace"))
            return [_ZAP_VERSION, request_id, b"400", b"unknown key", b"", b""]
        return [_ZAP_VERSION, request_id, b"200", b"OK", peer.encode(), b""]

    def _log_refusal(self, key: bytes, address: str) -> None:
        """Log a refused key at most once per _REFUSAL_LOG_S (a refused client retries
        every ZeroMQ reconnect interval)."""
        now = time.monotonic()
        last = self._refusals.get(key)
        if last is not None and now - last < _REFUSAL_LOG_S:
            return
        if last is None and len(self._refusals) >= 4096:
            del self._refusals[next(iter(self._refusals))]
        self._refusals[key] = now
        log.warning(
            "refused a connection from %s: its CURVE key %s is no peer allowed on that "
            "endpoint (an unknown node, or a role that may not send there)",
            address or "an unknown address",
            base64.b64encode(key).decode(),
        )

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        sock = self._context.socket(zmq.PAIR)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._stop_endpoint)
            sock.send(b"stop")
        finally:
            sock.close(linger=0)
        self._thread.join(10)


_lock = threading.Lock()
_handlers: dict[int, _Handler] = {}
_domain_ids = itertools.count(1)


class Admission:
    """One server socket's entry in its context's ZAP handler; ``release`` at close."""

    def __init__(self, context: ZmqContext, admit: Admit) -> None:
        self.domain = f"mld-{next(_domain_ids)}"
        self._context = context
        with _lock:
            handler = _handlers.get(id(context))
            if handler is None or not handler.alive():
                # (A dead one: its context was destroyed with sockets still open.)
                handler = _handlers[id(context)] = _Handler(context)
            handler.domains[self.domain] = admit

    def release(self) -> None:
        with _lock:
            handler = _handlers.get(id(self._context))
            if handler is None or handler.domains.pop(self.domain, None) is None:
                return
            if handler.domains:
                return
            del _handlers[id(self._context)]
        handler.stop()


def curve_server(
    sock: zmq.Socket[bytes], context: ZmqContext, secret: bytes, admit: Admit
) -> Admission:
    """Make ``sock`` (not yet bound or connected) a CURVE server with the private key
    ``secret`` that admits the clients ``admit`` names."""
    admission = Admission(context, admit)
    sock.setsockopt(zmq.ZAP_DOMAIN, admission.domain.encode())
    # No ZAP handler answering means refuse, never admit everyone.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return admission


def curve_client(
    sock: zmq.Socket[bytes], *, public: bytes, secret: bytes, server_public: bytes
) -> None:
    """Make ``sock`` (not yet connected) a CURVE client of the server ``server_public``."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


class Redial:
    """Connects a CURVE socket again after its handshake was refused.

    ZeroMQ does not reconnect after a refused handshake (ZAP 400): a sender that tried
    before the receiver learnt its key (the key directory is eventually consistent)
    would stay cut off for good. This watches the socket's handshake events and, after a
    refusal, disconnects and connects again: at once after the first refusal (it is
    only seen at the next send or receive, and the key is most likely known by then),
    then after 0.5 s, doubling after each further refusal up to 30 s. ``check`` is called
    from the socket's own thread (on every send and receive)."""

    _FIRST_S = 0.0
    _SECOND_S = 0.5
    _MAX_S = 30.0

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sock = sock
        self._endpoint = endpoint
        self._clock = clock
        self._monitor: zmq.Socket[bytes] | None = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self._delay = self._FIRST_S
        self._due: float | None = None
        self.refusals = 0

    def check(self) -> None:
        """Read the handshake events; connect again when a wait after a refusal ended."""
        monitor = self._monitor
        if monitor is None:
            return
        while monitor.poll(0, zmq.POLLIN):
            frames = monitor.recv_multipart()
            event = int.from_bytes(frames[0][:2], "little") if frames and frames[0] else 0
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._delay = self._FIRST_S
                self._due = None
            elif self._due is None:
                self.refusals += 1
                self._due = self._clock() + self._delay
                log.log(
                    logging.INFO if self.refusals == 1 else logging.WARNING,
                    "%s refused this node's connection; trying again in %.1f s (is this "
                    "node's key known there, with a role allowed on that endpoint?)",
                    self._endpoint,
                    self._delay,
                )
                self._delay = min(max(self._delay * 2, self._SECOND_S), self._MAX_S)
        if self._due is not None and self._clock() >= self._due:
            self._due = None
            with contextlib.suppress(zmq.ZMQError):  # already gone
                self._sock.disconnect(self._endpoint)
            self._sock.connect(self._endpoint)

    def close(self) -> None:
        if self._monitor is not None:
            # In a context being terminated (ETERM) the monitor goes with the socket anyway.
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
