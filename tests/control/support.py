"""Helpers of the control-plane tests: configs pointing at the test's etcd and prefix."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from config import MldConfig, load_config
from control import (
    ControlConfig,
    DiscoveredSender,
    Endpoint,
    EtcdClient,
    EtcdServer,
    ServiceControl,
)
from crypto_transport import KeyPair, Keyring, Receiver
from tests.support import REPO, terminate

M = TypeVar("M", bound=Message)


def control_config(server: EtcdServer, prefix: str, **changes: Any) -> ControlConfig:
    values: dict[str, Any] = {
        "endpoints": (server.endpoint,),
        "prefix": prefix,
        "lease_ttl_s": 2,
        "health_interval_s": 0.5,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
        # The etcd mld starts requires client certificates: each component uses its own.
        "credentials_dir": str(server.pki_dir or ""),
    }
    return ControlConfig(**(values | changes))


def mld_config(server: EtcdServer, prefix: str, state_dir: Path, **changes: Any) -> MldConfig:
    cfg = load_config()
    return dataclasses.replace(
        cfg,
        node=dataclasses.replace(cfg.node, state_dir=str(state_dir)),
        control=control_config(server, prefix, **changes),
    )


def client(server: EtcdServer, user: str = "root") -> EtcdClient:
    """A client of the test's etcd, authenticated as ``user`` (root: anything)."""
    return EtcdClient.connect(
        ControlConfig(endpoints=(server.endpoint,), **server.client_settings(user))
    )


def read_json(etcd: EtcdClient, key: str) -> Any:
    raw = etcd.get(key)
    return None if raw is None else json.loads(raw)


def spawn_mld(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``mld ARGS`` as a child process, its output appended to ``log``."""
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "mld.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (the clean stop), SIGKILL if it takes over 10 s."""
    if proc is not None:
        terminate(proc, 10)


def sniffer_stand_in(
    server: EtcdServer, prefix: str, state_dir: Path, name: str
) -> tuple[ServiceControl, DiscoveredSender]:
    """What ``mld sniffer run`` joins the control plane with, under a fresh key: its
    ServiceControl (watching detectors) and the sender that follows them. Not started."""
    cfg = mld_config(server, prefix, state_dir)
    ring = Keyring(KeyPair.generate(), grace_s=60)
    plane = ServiceControl(
        cfg, component="sniffer", instance=name, keyring=ring, watch=("detector",)
    )
    sender = DiscoveredSender(
        component="detector",
        endpoint_name="flows",
        channel="flows",
        sender_id=name,
        keyring=ring,
        settings=cfg.transport,
    )
    return plane, sender


def receiver_stand_in(
    server: EtcdServer,
    prefix: str,
    state_dir: Path,
    component: str,
    name: str,
    channel: str,
    message_type: type[M],
) -> tuple[ServiceControl, Receiver[M]]:
    """A service of ``component`` (firewall, rag) that registers a PULL receiver for
    ``channel`` on a free port under a fresh key; started and announced."""
    ring = Keyring(KeyPair.generate(), grace_s=60)
    plane = ServiceControl(
        mld_config(server, prefix, state_dir), component=component, instance=name, keyring=ring
    )
    settings = plane.start().transport
    receiver: Receiver[M] = Receiver(
        pattern="pull",
        endpoint="tcp://127.0.0.1:*",
        channel=channel,
        keyring=ring,
        message_type=message_type,
        settings=settings,
    )
    plane.announce({channel: Endpoint(receiver.bound_endpoint, "push", channel)})
    return plane, receiver
