"""X25519 key pairs, key files, session-key derivation and key rotation with a grace period."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from base.errors import KeyFileError, TransportError
from crypto_transport import KeyPair, Keyring, SessionKey, load_public_key
from crypto_transport.keys import derive_session_key
from tests.support import FakeClock

GRACE_S = 30.0


def _ring(own: KeyPair, clock: FakeClock | None = None, **peers: bytes) -> Keyring:
    ring = Keyring(own, grace_s=GRACE_S, clock=clock or FakeClock())
    for peer_id, public in peers.items():
        ring.add_peer(peer_id.replace("_", "-"), public)
    return ring


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- derivation ------------------------------------------------------------------------


def test_sender_and_receiver_derive_the_same_key() -> None:
    sensor, detector = KeyPair.generate(), KeyPair.generate()
    sensor_ring = _ring(sensor, detector_1=detector.public)
    detector_ring = _ring(detector, sensor_1=sensor.public)

    sent = sensor_ring.sending_key("detector-1")
    got = detector_ring.receiving_key(sent.key_id)

    assert got is not None
    assert got.key_id == sent.key_id
    assert got.key == sent.key
    assert len(sent.key) == 32
    assert len(sent.key_id) == 8
    # Each end names the other one.
    assert sent.peer_id == "detector-1"
    assert got.peer_id == "sensor-1"
    assert got.sender_public == sent.sender_public == sensor.public
    assert got.receiver_public == sent.receiver_public == detector.public
    assert detector_ring.accepted_key_ids() == [sent.key_id]


def test_each_direction_has_its_own_key() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    ring_a = _ring(a, b=b.public)
    ring_b = _ring(b, a=a.public)

    a_to_b = ring_a.sending_key("b")
    b_to_a = ring_b.sending_key("a")

    assert a_to_b.key != b_to_a.key
    assert a_to_b.key_id != b_to_a.key_id
    # A node never accepts frames sealed with its own outgoing key (no reflection).
    assert ring_a.receiving_key(a_to_b.key_id) is None
    assert ring_b.receiving_key(b_to_a.key_id) is None
    # ... but it accepts the peer's outgoing key.
    got = ring_a.receiving_key(b_to_a.key_id)
    assert got is not None
    assert got.key == b_to_a.key


def test_key_depends_on_both_key_pairs() -> None:
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    from_a = _ring(a, r=c.public).sending_key("r")
    from_b = _ring(b, r=c.public).sending_key("r")
    assert from_a.key != from_b.key
    assert from_a.key_id != from_b.key_id


def test_from_private_recovers_the_public_key() -> None:
    kp = KeyPair.generate()
    assert KeyPair.from_private(kp.private) == kp
    assert base64.b64decode(kp.public_b64) == kp.public


# --- key files -------------------------------------------------------------------------


def test_save_writes_private_0600_and_public_beside_it(tmp_path: Path) -> None:
    kp = KeyPair.generate()
    path = tmp_path / "keys" / "node.key"  # the directory does not exist yet

    kp.save(path)

    assert _mode(path) == 0o600
    assert base64.b64decode(path.read_text().strip()) == kp.private
    pub = Path(f"{path}.pub")
    assert pub.read_text().strip() == kp.public_b64
    assert load_public_key(pub.read_text(), what="node.key.pub") == kp.public
    assert KeyPair.load(path) == kp


def test_save_over_an_open_file_tightens_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("old\n")
    path.chmod(0o644)

    kp = KeyPair.generate()
    kp.save(path)

    assert _mode(path) == 0o600
    assert KeyPair.load(path) == kp


def test_load_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match="mld keys new") as info:
        KeyPair.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KeyPair.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        KeyPair.load(path)
    assert "0644" in str(info.value)


def test_load_refuses_a_group_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    KeyPair.generate().save(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        KeyPair.load(path)


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        KeyPair.load(path)


def _write_private(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "node.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not base64!\n", "not base64"),
        (b"AAAAA\n", "not base64"),
        (base64.b64encode(bytes(31)) + b"\n", "holds 31 bytes"),
        (base64.b64encode(bytes(33)) + b"\n", "holds 33 bytes"),
        (b"\n", "holds 0 bytes"),
    ],
    ids=["garbage", "bad-padding", "31-bytes", "33-bytes", "empty"],
)
def test_load_rejects_malformed_key_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = _write_private(tmp_path, content)
    with pytest.raises(KeyFileError, match=message) as info:
        KeyPair.load(path)
    assert str(path) in str(info.value)


def test_load_rejects_a_binary_key_file_with_key_file_error(tmp_path: Path) -> None:
    """A key file that is not even text (e.g. a raw 32-byte key) is malformed, not a crash."""
    path = _write_private(tmp_path, b"\xff\xfe" + bytes(30))
    with pytest.raises(KeyFileError):
        KeyPair.load(path)


def test_load_public_key_names_what_is_wrong() -> None:
    kp = KeyPair.generate()
    assert load_public_key(kp.public_b64 + "\n", what="x") == kp.public
    with pytest.raises(KeyFileError, match=r"transport\.peers\.sensor-1 is not base64"):
        load_public_key("not-a-key", what="transport.peers.sensor-1")
    with pytest.raises(KeyFileError, match=r"transport\.peers\.sensor-1 holds 16 bytes"):
        load_public_key(base64.b64encode(bytes(16)).decode(), what="transport.peers.sensor-1")


# --- peers -----------------------------------------------------------------------------


def test_sending_key_for_unknown_peer_names_it() -> None:
    ring = _ring(KeyPair.generate())
    with pytest.raises(TransportError, match="'detector-9'") as info:
        ring.sending_key("detector-9")
    assert "transport.peers" in str(info.value)


def test_add_peer_with_the_same_key_changes_nothing() -> None:
    peer = KeyPair.generate()
    ring = _ring(KeyPair.generate(), p=peer.public)
    generation = ring.generation
    key = ring.sending_key("p")
    ring.add_peer("p", peer.public)
    assert ring.generation == generation
    assert ring.sending_key("p") == key
    assert ring.peers == {"p": peer.public}


def test_remove_peer_drops_its_keys_at_once() -> None:
    clock = FakeClock()
    own, peer = KeyPair.generate(), KeyPair.generate()
    ring = _ring(own, clock, p=peer.public)
    kid = _ring(peer, q=own.public).sending_key("q").key_id
    # A replaced key in its grace period goes too.
    new_peer = KeyPair.generate()
    ring.add_peer("p", new_peer.public)
    new_kid = _ring(new_peer, q=own.public).sending_key("q").key_id
    assert ring.receiving_key(kid) is not None
    assert ring.receiving_key(new_kid) is not None
    generation = ring.generation

    ring.remove_peer("p")

    assert ring.receiving_key(kid) is None
    assert ring.receiving_key(new_kid) is None
    assert not ring.is_known_expired(kid)
    assert ring.accepted_key_ids() == []
    assert ring.peers == {}
    assert ring.generation > generation
    with pytest.raises(TransportError, match="'p'"):
        ring.sending_key("p")


def test_unusable_peer_key_is_refused_and_leaves_the_keyring_working() -> None:
    """An all-zero (low-order) public key is refused; the keyring must stay usable."""
    good = KeyPair.generate()
    ring = _ring(KeyPair.generate(), good=good.public)

    with pytest.raises(TransportError, match="'evil'"):
        ring.add_peer("evil", bytes(32))

    assert ring.peers == {"good": good.public}
    # Later changes to the keyring still work.
    other = KeyPair.generate()
    ring.add_peer("other", other.public)
    assert ring.sending_key("other").receiver_public == other.public


# --- rotation --------------------------------------------------------------------------


def test_own_rotation_keeps_old_key_for_the_grace_period() -> None:
    clock = FakeClock()
    receiver, sender = KeyPair.generate(), KeyPair.generate()
    r_ring = _ring(receiver, clock, sensor=sender.public)
    s_ring = _ring(sender, detector=receiver.public)
    old_kid = s_ring.sending_key("detector").key_id
    assert r_ring.receiving_key(old_kid) is not None

    new_receiver = KeyPair.generate()
    r_ring.rotate_own(new_receiver)
    assert r_ring.own == new_receiver
    # The receiver now seals with its new key pair.
    assert r_ring.sending_key("sensor").sender_public == new_receiver.public
    # The sender has not heard of the new key yet: its frames are still accepted.
    assert r_ring.receiving_key(old_kid) is not None
    s_ring.add_peer("detector", new_receiver.public)
    new_kid = s_ring.sending_key("detector").key_id
    assert new_kid != old_kid
    got = r_ring.receiving_key(new_kid)
    assert got is not None
    assert got.key == s_ring.sending_key("detector").key
    assert set(r_ring.accepted_key_ids()) == {old_kid, new_kid}

    clock.advance(GRACE_S - 0.001)
    assert r_ring.receiving_key(old_kid) is not None
    assert not r_ring.is_known_expired(old_kid)

    clock.advance(0.001)
    assert r_ring.accepted_key_ids() == [new_kid]
    assert r_ring.receiving_key(old_kid) is None
    assert r_ring.is_known_expired(old_kid)
    assert r_ring.receiving_key(new_kid) is not None
    assert not r_ring.is_known_expired(new_kid)


def test_replaced_peer_key_stays_accepted_for_the_grace_period() -> None:
    clock = FakeClock()
    receiver, sender = KeyPair.generate(), KeyPair.generate()
    r_ring = _ring(receiver, clock, sensor=sender.public)
    s_ring = _ring(sender, detector=receiver.public)
    old_kid = s_ring.sending_key("detector").key_id

    new_sender = KeyPair.generate()
    s_ring.rotate_own(new_sender)
    new_kid = s_ring.sending_key("detector").key_id
    # Until the receiver learns the new public key, the new key id is unknown.
    assert r_ring.receiving_key(new_kid) is None
    assert not r_ring.is_known_expired(new_kid)

    r_ring.add_peer("sensor", new_sender.public)
    assert r_ring.peers == {"sensor": new_sender.public}
    assert r_ring.receiving_key(old_kid) is not None
    got = r_ring.receiving_key(new_kid)
    assert got is not None
    assert got.peer_id == "sensor"

    clock.advance(GRACE_S / 2)
    assert r_ring.receiving_key(old_kid) is not None

    clock.advance(GRACE_S / 2)
    assert r_ring.receiving_key(old_kid) is None
    assert r_ring.is_known_expired(old_kid)
    assert r_ring.receiving_key(new_kid) is not None


def test_grace_entries_expire_when_the_keyring_changes_again() -> None:
    clock = FakeClock()
    receiver, sender = KeyPair.generate(), KeyPair.generate()
    r_ring = _ring(receiver, clock, sensor=sender.public)
    old_kid = _ring(sender, d=receiver.public).sending_key("d").key_id
    r_ring.rotate_own(KeyPair.generate())
    clock.advance(GRACE_S + 1)
    # A rebuild after the grace ended forgets the old key without a lookup first.
    r_ring.add_peer("other", KeyPair.generate().public)
    assert r_ring.is_known_expired(old_kid)
    assert old_kid not in r_ring.accepted_key_ids()
    assert r_ring.receiving_key(old_kid) is None


def test_session_key_is_a_value() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    k1 = _ring(a, b=b.public).sending_key("b")
    k2 = _ring(a, b=b.public).sending_key("b")
    assert isinstance(k1, SessionKey)
    assert k1 == k2


def test_reprs_never_show_key_material() -> None:
    """A key pair or session key in a log line, a traceback or an error message (a repr of
    a dataclass holding it, say) used to print the private key and the session key."""
    own, peer = KeyPair.generate(), KeyPair.generate()
    session = derive_session_key(own, peer.public, peer_id="peer", own_is_sender=True)
    for secret, obj in ((own.private, own), (session.key, session)):
        text = repr(obj) + str(obj) + repr([obj])
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in text
    assert repr(own.public) in repr(own)
