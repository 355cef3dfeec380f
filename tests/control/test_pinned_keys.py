"""A forged registration for a peer pinned in transport.peers (issue 19, finding 2).

The attack: a detector pins its firewall agent ``fw-1`` in ``transport.peers`` (so its
verdicts are sealed for that key only). Someone who can write etcd registers
``services/firewall/fw-1`` with an endpoint of their own and their own public key (and
puts that key under ``keys/fw-1``). Before the fix the detector's DiscoveredSender
replaced the pinned key with the forged one and sent its verdicts, sealed for the
attacker, to the attacker's socket. Now a registration whose key differs from the
pinned one is ignored (logged, counted as ``forged_registrations``); the real agent,
registered with the pinned key, keeps getting the verdicts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from control import DiscoveredSender, Endpoint, EtcdServer, ServiceControl
from control.layout import Registration
from crypto_transport import KeyPair, Keyring, Receiver
from proto.events_pb2 import VerdictBatch
from tests.control.support import client, mld_config
from tests.support import wait_for

pytestmark = pytest.mark.etcd


def _registration(instance: str, public: str, endpoint: str) -> str:
    return Registration(
        component="firewall",
        instance=instance,
        public_key=public,
        version="0",
        started_ts=time.time(),
        host="h",
        pid=1,
        endpoints={"verdicts": Endpoint(endpoint, "push", "verdicts")},
    ).to_json()


def _receiver(own: KeyPair, detector: KeyPair, settings: object) -> Receiver[VerdictBatch]:
    ring = Keyring(own, grace_s=60)
    # transport.peers names the detector as one (a receiver takes verdicts from detectors
    # only, docs/TRANSPORT.md "Roles").
    ring.add_peer("det-1", detector.public, roles=("detector",))
    return Receiver(
        pattern="pull",
        endpoint="tcp://127.0.0.1:*",
        channel="verdicts",
        keyring=ring,
        message_type=VerdictBatch,
        settings=settings,  # type: ignore[arg-type]
    )


def test_a_forged_registration_does_not_replace_a_pinned_key(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    cfg = mld_config(etcd_server, etcd_prefix, tmp_path)
    det, fw, attacker = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    ring = Keyring(det, grace_s=60)
    ring.add_peer("fw-1", fw.public)  # transport.peers: {fw-1: <the agent's key>}
    plane = ServiceControl(
        cfg, component="detector", instance="det-1", keyring=ring, watch=("firewall",)
    )
    sender = DiscoveredSender(
        component="firewall",
        endpoint_name="verdicts",
        channel="verdicts",
        sender_id="det-1",
        keyring=ring,
        settings=cfg.transport,
    )
    real = _receiver(fw, det, cfg.transport)
    evil = _receiver(attacker, det, cfg.transport)
    etcd = client(etcd_server)
    try:
        plane.start()
        key = f"{etcd_prefix}/services/firewall/fw-1"
        etcd.put(key, _registration("fw-1", fw.public_b64, real.bound_endpoint))

        def follows(endpoint: str) -> bool:
            state = plane.poll()
            if state is not None:
                sender.update(state.peers.get("firewall", {}).values())
            return sender.endpoint == endpoint

        wait_for(lambda: follows(real.bound_endpoint), 5, "the real agent")
        # The attack: the same instance, the attacker's socket and key.
        etcd.put(key, _registration("fw-1", attacker.public_b64, evil.bound_endpoint))
        etcd.put(f"{etcd_prefix}/keys/fw-1", attacker.public_b64)
        wait_for(lambda: follows("(no live firewall)"), 5, "the forged registration seen")
        assert ring.peers["fw-1"] == fw.public, "the pinned key was replaced"
        assert sender.forged == 1
        sender.send(VerdictBatch())
        assert evil.recv(timeout_ms=300) is None, "the attacker got a verdict"
        # The real agent registers again (its lease renewal, a restart): it is used again.
        etcd.put(key, _registration("fw-1", fw.public_b64, real.bound_endpoint))
        wait_for(lambda: follows(real.bound_endpoint), 5, "the real agent back")
        # The CURVE handshake with the real agent completes in the background: until then
        # a send finds no connected peer and is dropped (counted), so send until one goes.
        wait_for(lambda: sender.send(VerdictBatch()), 5, "a verdict sent to the real agent")
        got = real.recv(timeout_ms=5000)
        assert got is not None and got.peer_id == "det-1"
        # Still in etcd, never used.
        assert etcd.get(f"{etcd_prefix}/keys/fw-1") == attacker.public_b64.encode()
    finally:
        sender.close()
        plane.close()
        real.close()
        evil.close()
        etcd.close()
