"""Senders that follow discovery, and keyrings that follow the key directory.

:class:`DiscoveredSender` stands in for a ``crypto_transport.Sender`` whose receivers come
from etcd: it keeps one PUSH socket per live instance of a component that offers the
named endpoint, seals each batch for that instance, and spreads batches over the
instances in turn. When an instance disappears (its lease ended) its socket is closed;
when one appears, or comes back on another address or with another key, a socket is
opened to it. With no live instance a batch is dropped and counted under
``dropped["no_receiver"]``.

:func:`output_sender` is how a service opens a sending end: a DiscoveredSender when it
follows discovery and the end is a PUSH, else crypto_transport's ``open_sender`` on the
configured endpoint (the detector's outputs, the sniffer's publisher).

:func:`sync_keyring` adds the public keys of the key directory to a keyring, each with
the roles of its instance's registrations (so a receiver accepts frames from every
registered sender whose component may send there) and forgets the ones it added
that left the directory; peers from ``transport.peers`` are never touched.

A peer in ``transport.peers`` is **pinned**: neither the key directory nor a
registration replaces its key. A registration under a pinned instance id with another
key is ignored, logged and counted (``DiscoveredSender.forged``): whoever can write etcd
cannot redirect a service's output to a socket of their own by claiming a pinned
peer's name. Which peers a keyring learned from etcd (as opposed to pinned) is kept
per keyring by :func:`learned_peers`, shared by sync_keyring and every sender.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import zmq
from google.protobuf.message import Message

from base.errors import KeyFileError, TransportError
from control.layout import Registration
from crypto_transport import Keyring, Sender, SendingEnd, TransportConfig, open_sender
from crypto_transport.counters import ChannelCounters
from crypto_transport.keys import load_public_key

__all__ = ["DiscoveredSender", "advertised", "learned_peers", "output_sender", "sync_keyring"]

log = logging.getLogger(__name__)

_WILDCARDS = {"*", "0.0.0.0", "[::]", "::"}


def advertised(bound: str, host: str) -> str:
    """The endpoint peers should connect to for a socket bound to ``bound`` (as ZeroMQ
    reports it after binding): a wildcard address is replaced by ``host``."""
    parts = urlsplit(bound)
    if parts.scheme != "tcp" or parts.hostname is None:
        return bound
    address = parts.netloc.rsplit(":", 1)[0]
    if address in _WILDCARDS:
        return f"tcp://{host}:{parts.port}"
    return bound


# Per keyring: the peer ids added from the key directory (sync_keyring), and the ones
# added from registrations (DiscoveredSender). Every other peer is pinned.
_LEARNED: weakref.WeakKeyDictionary[Keyring, set[str]] = weakref.WeakKeyDictionary()
_DISCOVERED: weakref.WeakKeyDictionary[Keyring, set[str]] = weakref.WeakKeyDictionary()


def learned_peers(keyring: Keyring) -> set[str]:
    """The peer ids ``keyring`` holds because the key directory in etcd named them. The
    same set object for the life of the keyring: callers update it in place."""
    return _LEARNED.setdefault(keyring, set())


def is_pinned(keyring: Keyring, instance: str) -> bool:
    """Does ``keyring`` hold a key for ``instance`` that did not come from etcd (a
    ``transport.peers`` entry)?"""
    return (
        instance in keyring.peers
        and instance not in learned_peers(keyring)
        and instance not in _DISCOVERED.setdefault(keyring, set())
    )


def sync_keyring(
    keyring: Keyring,
    keys: Mapping[str, str],
    learned: set[str],
    bad: set[str] | None = None,
    roles: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Make ``keyring`` hold every key of the directory ``keys``, each with the roles
    ``roles`` gives its instance (the components it is registered as; none: it may send
    nothing); ``learned`` holds the peer ids added this way before (updated in place).
    Entries that are not a usable key are skipped and logged once each (``bad``)."""
    bad = set() if bad is None else bad
    static = set(keyring.peers) - learned
    for instance, text in keys.items():
        if instance in static or f"{instance}={text}" in bad:
            continue
        try:
            public = load_public_key(text, what=f"key directory entry {instance}")
            keyring.add_peer(instance, public, roles=(roles or {}).get(instance, ()))
        except (KeyFileError, TransportError, ValueError) as exc:
            bad.add(f"{instance}={text}")
            log.warning("ignoring the public key of %s from etcd: %s", instance, exc)
            continue
        learned.add(instance)
    for instance in sorted(learned - set(keys)):
        keyring.remove_peer(instance)
        learned.discard(instance)


class DiscoveredSender:
    """PUSH batches to the live instances of ``component`` offering ``endpoint_name``."""

    def __init__(
        self,
        *,
        component: str,
        endpoint_name: str,
        channel: str,
        sender_id: str,
        keyring: Keyring,
        settings: TransportConfig,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.component = component
        self.endpoint_name = endpoint_name
        self.channel = channel
        self.counters = ChannelCounters()
        self._sender_id = sender_id
        self._keyring = keyring
        self._settings = settings
        self._context = context
        # instance -> (endpoint, public key, sender)
        self._senders: dict[str, tuple[str, str, Sender]] = {}
        # Registrations ignored because they claim a pinned peer with another key.
        self.forged = 0
        self._forged_seen: set[tuple[str, str]] = set()
        self._order: list[str] = []
        self._next = 0

    @property
    def endpoint(self) -> str:
        live = [endpoint for endpoint, _, _ in self._senders.values()]
        return ", ".join(live) if live else f"(no live {self.component})"

    @property
    def instances(self) -> list[str]:
        return list(self._order)

    def update(self, instances: Iterable[Registration]) -> None:
        """Connect to new instances, reconnect moved ones, close the ones that left."""
        wanted: dict[str, tuple[str, str]] = {}
        for reg in instances:
            offer = reg.endpoints.get(self.endpoint_name)
            if offer is None or offer.channel != self.channel or not reg.public_key:
                continue
            if offer.pattern != "push":
                log.warning(
                    "%s/%s offers %s as %r: only push is supported here",
                    reg.component,
                    reg.instance,
                    self.endpoint_name,
                    offer.pattern,
                )
                continue
            if not self._key_allowed(reg):
                continue
            wanted[reg.instance] = (offer.endpoint, reg.public_key)
        for instance in list(self._senders):
            endpoint, public, sender = self._senders[instance]
            if wanted.get(instance) != (endpoint, public):
                self._fold(sender)
                sender.close()
                del self._senders[instance]
                log.info(
                    "%s: disconnected from %s/%s at %s",
                    self.channel,
                    self.component,
                    instance,
                    endpoint,
                )
        for instance, (endpoint, public) in wanted.items():
            if instance in self._senders:
                continue
            try:
                key = load_public_key(public, what=instance)
                if not is_pinned(self._keyring, instance):
                    self._keyring.add_peer(instance, key)
                    _DISCOVERED.setdefault(self._keyring, set()).add(instance)
                sender = Sender(
                    pattern="push",
                    endpoint=endpoint,
                    channel=self.channel,
                    sender_id=self._sender_id,
                    keyring=self._keyring,
                    recipients=[instance],
                    settings=self._settings,
                    bind=False,
                    context=self._context,
                    # A receiver that dies without deregistering: its batches are counted
                    # as dropped (timeout) until its lease ends, not queued for it.
                    immediate=True,
                )
            except (TransportError, KeyFileError, ValueError) as exc:
                log.warning(
                    "%s: cannot connect to %s/%s at %s: %s",
                    self.channel,
                    self.component,
                    instance,
                    endpoint,
                    exc,
                )
                continue
            self._senders[instance] = (endpoint, public, sender)
            log.info(
                "%s: connected to %s/%s at %s", self.channel, self.component, instance, endpoint
            )
        self._order = sorted(self._senders)

    def maintain(self) -> None:
        """:meth:`crypto_transport.Sender.maintain` for every live instance."""
        for _, _, sender in self._senders.values():
            sender.maintain()

    def _key_allowed(self, reg: Registration) -> bool:
        """False (logged once, counted once) for a registration that claims a pinned
        peer with a key other than the pinned one."""
        if not is_pinned(self._keyring, reg.instance):
            return True
        try:
            if (
                load_public_key(reg.public_key, what=reg.instance)
                == self._keyring.peers[reg.instance]
            ):
                return True
        except (KeyFileError, TransportError, ValueError):
            pass
        seen = (reg.instance, reg.public_key)
        if seen not in self._forged_seen:
            self._forged_seen.add(seen)
            self.forged += 1
            log.warning(
                "%s: ignoring the registration of %s/%s from etcd: its public key is not "
                "the one pinned for %s in transport.peers (a forged or stale registration; "
                "if the peer's key really changed, update transport.peers)",
                self.channel,
                reg.component,
                reg.instance,
                reg.instance,
            )
        return False

    def send(self, message: Message) -> bool:
        return self.send_payload(message.SerializeToString())

    def send_payload(self, payload: bytes) -> bool:
        """Send one batch to the next live instance; False if dropped (counted)."""
        if not self._order:
            self.counters.dropped["no_receiver"] += 1
            return False
        instance = self._order[self._next % len(self._order)]
        self._next += 1
        return self._senders[instance][2].send_payload(payload)

    def stats(self) -> dict[str, int]:
        """Counters summed over the live senders and the closed ones."""
        total = ChannelCounters()
        self._add(total, self.counters)
        for _, _, sender in self._senders.values():
            self._add(total, sender.counters)
        out = {"sent": total.sent, "sent_bytes": total.sent_bytes, "receivers": len(self._order)}
        out["forged_registrations"] = self.forged
        out |= {f"dropped_{k}": v for k, v in total.dropped.items()}
        return out

    def _fold(self, sender: Sender) -> None:
        self._add(self.counters, sender.counters)

    @staticmethod
    def _add(into: ChannelCounters, other: ChannelCounters) -> None:
        into.sent += other.sent
        into.sent_bytes += other.sent_bytes
        into.dropped.update(other.dropped)

    def close(self) -> None:
        for _, _, sender in self._senders.values():
            self._fold(sender)
            sender.close()
        self._senders.clear()
        self._order = []


def output_sender(
    end: SendingEnd,
    *,
    sender_id: str,
    keyring: Keyring,
    settings: TransportConfig,
    discover: bool = False,
    component: str = "",
    endpoint_name: str = "",
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
) -> Sender | DiscoveredSender:
    """The sender for one output: with ``discover`` and a PUSH end, batches go to the
    live instances of ``component`` offering ``endpoint_name``; otherwise to
    ``end.endpoint`` (TransportError)."""
    if discover and end.pattern == "push":
        return DiscoveredSender(
            component=component,
            endpoint_name=endpoint_name,
            channel=end.channel,
            sender_id=sender_id,
            keyring=keyring,
            settings=settings,
            context=context,
        )
    return open_sender(
        end, sender_id=sender_id, keyring=keyring, settings=settings, context=context
    )
