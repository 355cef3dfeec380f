"""X25519 key pairs, key files, and the per-peer session keys derived from them.

Every node has one X25519 key pair. The key that seals frames from sender S to receiver R
is derived by both ends from the X25519 shared secret and both public keys::

    shared  = X25519(S.private, R.public) = X25519(R.private, S.public)
    key     = BLAKE2b-256(shared || S.public || R.public, person="mld-transport-1")
    key_id  = BLAKE2b-64(S.public || R.public, person="mld-key-id-1")

so the S->R key differs from the R->S key, and the key id names the pair of public keys
without revealing anything. Only public keys ever leave a host.

Roles: every peer has the roles it may play (its components: ``sniffer``, ``detector``, ...),
from ``transport.peer_roles`` or its name for configured peers and from its registrations
for peers learnt from etcd. A receiver accepts a frame only from a peer holding one of the
roles allowed to send on its channel (``TransportConfig.channel_senders``), so a stolen
sniffer key cannot send verdicts to the firewall.

Rotation: when a node replaces its own key pair, or learns a peer's new public key, the
keys derived from the old ones stay accepted for a grace period, so frames in flight and
senders that have not yet heard of the new key are not lost.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.hash
import nacl.public
from nacl.encoding import RawEncoder

from base.errors import ConfigError, KeyFileError, TransportError

if TYPE_CHECKING:
    from crypto_transport.config import TransportConfig

__all__ = [
    "ROLES",
    "KeyPair",
    "Keyring",
    "SessionKey",
    "derive_session_key",
    "load_public_key",
    "role_from_name",
]

# The roles a peer can hold: the components that send or receive on the transport.
ROLES = ("sniffer", "detector", "firewall", "rag", "watch")
# Words in peer names that mean a role (a sniffer's id is its sensor id: sensor-1).
_ROLE_WORDS = {role: role for role in ROLES} | {"sensor": "sniffer"}

_KEY_PERSON = b"mld-transport-1"
_KEY_ID_PERSON = b"mld-key-id-1"
KEY_ID_BYTES = 8
_MAX_EXPIRED_REMEMBERED = 256


@dataclass(frozen=True)
class KeyPair:
    """One node's X25519 key pair. Its repr shows the public key only: a key pair that
    reaches a log line, a traceback or an error message must not carry the private key."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        sk = nacl.public.PrivateKey.generate()
        return cls(private=bytes(sk), public=bytes(sk.public_key))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        sk = nacl.public.PrivateKey(private)
        return cls(private=bytes(sk), public=bytes(sk.public_key))

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode("ascii")

    def save(self, path: str | Path) -> None:
        """Write the private key (base64, mode 0600) and ``PATH.pub`` beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # O_CREAT's mode does not apply to an existing file: close it to others before writing.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(self.private).decode("ascii") + "\n")
        Path(f"{path}.pub").write_text(self.public_b64 + "\n")

    @classmethod
    def load(cls, path: str | Path) -> KeyPair:
        """Read a private key file, refusing one that others can read."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyFileError(
                f"key file {path} not found; create one with `mld keys new {path}` "
                "or set transport.key_file in mld.yaml"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"key file {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}: a private key must be readable by its "
                f"owner only; run `chmod 600 {path}`"
            )
        try:
            text = path.read_text(encoding="ascii")
        except UnicodeDecodeError:
            raise KeyFileError(
                f"key file {path} is not base64 text; expected a key written by `mld keys new`"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"key file {path}: {exc.strerror}") from exc
        return cls.from_private(_decode_key(text, f"key file {path}"))


def load_public_key(value: str, *, what: str) -> bytes:
    """Decode a base64 X25519 public key, naming ``what`` in the error."""
    return _decode_key(value, what)


def _decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(
            f"{what} is not base64; expected a key written by `mld keys new`"
        ) from None
    if len(raw) != nacl.public.PrivateKey.SIZE:
        raise KeyFileError(f"{what} holds {len(raw)} bytes; an X25519 key has 32")
    return raw


def role_from_name(peer_id: str) -> str | None:
    """The role a peer name spells (``detector-1`` -> detector, ``edge.sensor.2`` ->
    sniffer), or None when its words name no role or more than one."""
    words = {w for w in re.split(r"[^a-z0-9]+", peer_id.lower()) if w}
    roles = {_ROLE_WORDS[w] for w in words if w in _ROLE_WORDS}
    return roles.pop() if len(roles) == 1 else None


def peer_roles_from_config(transport: TransportConfig) -> dict[str, frozenset[str]]:
    """The roles of each peer of ``transport.peers``: ``transport.peer_roles`` when it
    names the peer, else the role its name spells; ConfigError when neither says."""
    out: dict[str, frozenset[str]] = {}
    for peer_id, roles in transport.peer_roles.items():
        if peer_id not in transport.peers:
            raise ConfigError(
                f"transport.peer_roles.{peer_id} names no peer of transport.peers; "
                "add its public key there or remove the entry"
            )
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ConfigError(
                f"transport.peer_roles.{peer_id}: {', '.join(bad) or 'empty list'} is not a "
                f"role; give one or more of {', '.join(ROLES)}"
            )
    for peer_id in transport.peers:
        if peer_id in transport.peer_roles:
            out[peer_id] = frozenset(transport.peer_roles[peer_id])
            continue
        role = role_from_name(peer_id)
        if role is None:
            raise ConfigError(
                f"transport.peers.{peer_id}: its name does not say which component it is, "
                "so this node cannot tell what it may send; add "
                f"`transport.peer_roles: {{{peer_id}: [ROLE]}}` with ROLE one or more of "
                f"{', '.join(ROLES)}"
            )
        out[peer_id] = frozenset((role,))
    return out


@dataclass(frozen=True)
class SessionKey:
    """The symmetric key for one direction between two nodes (its repr leaves the key
    out: the key id names it)."""

    key_id: bytes
    key: bytes = field(repr=False)
    peer_id: str
    sender_public: bytes
    receiver_public: bytes


def derive_session_key(
    own: KeyPair, peer_public: bytes, *, peer_id: str, own_is_sender: bool
) -> SessionKey:
    """Derive the key that seals frames between ``own`` and the peer, in one direction."""
    if own_is_sender:
        sender_public, receiver_public = own.public, peer_public
    else:
        sender_public, receiver_public = peer_public, own.public
    try:
        shared = nacl.bindings.crypto_scalarmult(own.private, peer_public)
    except Exception as exc:  # libsodium refuses low-order points
        raise TransportError(f"public key of peer {peer_id!r} is unusable: {exc}") from exc
    key = nacl.hash.blake2b(
        shared + sender_public + receiver_public,
        digest_size=32,
        person=_KEY_PERSON,
        encoder=RawEncoder,
    )
    key_id = nacl.hash.blake2b(
        sender_public + receiver_public,
        digest_size=KEY_ID_BYTES,
        person=_KEY_ID_PERSON,
        encoder=RawEncoder,
    )
    return SessionKey(key_id, key, peer_id, sender_public, receiver_public)


@dataclass
class _Entry:
    key: SessionKey
    expires_at: float | None  # None while current


class Keyring:
    """Session keys of one node: what it seals with and which key ids it accepts.

    ``sending_key(peer)`` is always derived from the current key pairs; ``receiving_key``
    also accepts keys derived from a replaced key pair (ours or the peer's) until the
    grace period after the replacement has passed.
    """

    def __init__(
        self,
        own: KeyPair,
        *,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._own = own
        self._grace_s = grace_s
        self._clock = clock
        self._peers: dict[str, bytes] = {}
        self._roles: dict[str, frozenset[str]] = {}
        self._send: dict[str, SessionKey] = {}
        self._recv: dict[bytes, _Entry] = {}
        # Key ids whose grace period ended, newest last; bounded, only for error reasons.
        self._expired: dict[bytes, None] = {}
        # Increases whenever the accepted keys change (receivers re-subscribe on it).
        self.generation = 0

    @classmethod
    def from_config(cls, transport: TransportConfig) -> Keyring:
        """This node's keyring from ``transport``: its key file and every configured peer
        with its roles (ConfigError when a peer's role cannot be told)."""
        roles = peer_roles_from_config(transport)
        ring = cls(KeyPair.load(transport.key_file), grace_s=transport.rotation_grace_s)
        for peer_id, public in transport.peers.items():
            ring.add_peer(
                peer_id,
                load_public_key(public, what=f"transport.peers.{peer_id}"),
                roles=roles[peer_id],
            )
        return ring

    @property
    def own(self) -> KeyPair:
        return self._own

    @property
    def peers(self) -> dict[str, bytes]:
        return dict(self._peers)

    def roles_of(self, peer_id: str) -> frozenset[str]:
        """The roles ``peer_id`` may play (empty for an unknown peer)."""
        return self._roles.get(peer_id, frozenset())

    def peer_with_public(self, public_key: bytes) -> str | None:
        """The peer whose current key, or replaced key still in its grace period, is
        ``public_key`` (who holds a connection: crypto_transport.curve); None if none."""
        # Copies: this runs on the ZAP thread while the service thread may add a peer.
        for peer_id, public in list(self._peers.items()):
            if public == public_key:
                return peer_id
        now = self._clock()
        for entry in list(self._recv.values()):
            if entry.key.sender_public == public_key and (
                entry.expires_at is None or now < entry.expires_at
            ):
                return entry.key.peer_id
        return None

    def add_peer(
        self, peer_id: str, public_key: bytes, *, roles: Iterable[str] | None = None
    ) -> None:
        """Learn or replace a peer's public key; a replaced key stays accepted for the grace.

        ``roles`` replaces the peer's roles; None keeps the ones it has (none for a new
        peer: it can be sent to, but no receiver accepts its frames)."""
        if roles is not None:
            bad = sorted(set(roles) - set(ROLES))
            if bad:
                raise TransportError(
                    f"peer {peer_id!r}: unknown role {', '.join(bad)}; roles are {', '.join(ROLES)}"
                )
        old = self._peers.get(peer_id)
        if old != public_key:
            # Refuse an unusable key (low-order point) before anything changes.
            derive_session_key(self._own, public_key, peer_id=peer_id, own_is_sender=True)
        if roles is not None:
            self._roles[peer_id] = frozenset(roles)
        else:
            self._roles.setdefault(peer_id, frozenset())
        if old == public_key:
            return
        self._peers[peer_id] = public_key
        self._rebuild(retire_own=None, retire_peer=(peer_id, old) if old else None)

    def remove_peer(self, peer_id: str) -> None:
        """Forget a peer at once (no grace): its frames are rejected from now on."""
        self._peers.pop(peer_id, None)
        self._roles.pop(peer_id, None)
        self._send.pop(peer_id, None)
        self._recv = {kid: e for kid, e in self._recv.items() if e.key.peer_id != peer_id}
        self.generation += 1

    def rotate_own(self, new: KeyPair) -> None:
        """Replace this node's key pair; keys from the old one stay accepted for the grace."""
        old = self._own
        for peer_id, public in self._peers.items():  # fail before anything changes
            derive_session_key(new, public, peer_id=peer_id, own_is_sender=True)
        self._own = new
        self._rebuild(retire_own=old, retire_peer=None)

    def sending_key(self, peer_id: str) -> SessionKey:
        try:
            return self._send[peer_id]
        except KeyError:
            raise TransportError(
                f"no public key for peer {peer_id!r}; add it under transport.peers in mld.yaml"
            ) from None

    def receiving_key(self, key_id: bytes) -> SessionKey | None:
        """The key for ``key_id`` if it is current or still within its grace period."""
        entry = self._recv.get(key_id)
        if entry is None:
            return None
        if entry.expires_at is not None and self._clock() >= entry.expires_at:
            del self._recv[key_id]
            self._remember_expired(key_id)
            return None
        return entry.key

    def accepted_key_ids(self) -> list[bytes]:
        now = self._clock()
        return [kid for kid, e in self._recv.items() if e.expires_at is None or now < e.expires_at]

    def is_known_expired(self, key_id: bytes) -> bool:
        """True for a key id this keyring accepted once but no longer does."""
        return key_id in self._expired

    def _remember_expired(self, key_id: bytes) -> None:
        self._expired[key_id] = None
        while len(self._expired) > _MAX_EXPIRED_REMEMBERED:
            del self._expired[next(iter(self._expired))]

    def _rebuild(
        self, *, retire_own: KeyPair | None, retire_peer: tuple[str, bytes] | None
    ) -> None:
        now = self._clock()
        expiry = now + self._grace_s
        recv: dict[bytes, _Entry] = {}
        for kid, e in self._recv.items():
            if e.expires_at is not None:
                # Already retired: kept while its grace period lasts.
                if now < e.expires_at:
                    recv[kid] = e
                else:
                    self._remember_expired(kid)
            elif (retire_own is not None and e.key.receiver_public == retire_own.public) or (
                retire_peer is not None
                and e.key.peer_id == retire_peer[0]
                and e.key.sender_public == retire_peer[1]
            ):
                # Current, but derived from a replaced key: its grace period starts now.
                recv[kid] = _Entry(e.key, expiry)
        self._send = {}
        for peer_id, public in self._peers.items():
            self._send[peer_id] = derive_session_key(
                self._own, public, peer_id=peer_id, own_is_sender=True
            )
            rk = derive_session_key(self._own, public, peer_id=peer_id, own_is_sender=False)
            recv[rk.key_id] = _Entry(rk, None)
        self._recv = recv
        self.generation += 1
