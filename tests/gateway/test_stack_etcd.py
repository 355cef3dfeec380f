"""The gateway stack's own etcd, started the way ``mld gateway run`` starts it (the
supervised child with the derived config), and attacked (issue 19, finding 2).

The attacks: a local process without the stack's certificates reads or writes
``/mld/config/...`` and ``/mld/keys/...`` (before the fix the stack's etcd listened in
plaintext without users, and both worked); a process holding the sniffer's certificate
(a compromised sniffer) rewrites the firewall agent's settings, registers as a firewall
agent or as a detector. Only the etcd is started here: the services need XDP and
namespaces (tests/e2e runs the whole stack).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import yaml

from base.errors import ControlPlaneError
from control import ControlConfig, EtcdClient
from gateway.stack import GatewayStack, StackOptions
from tests.support import require_etcd

pytestmark = pytest.mark.etcd


def test_the_stacks_etcd_needs_a_certificate_and_each_component_has_its_role(
    tmp_path: Path,
) -> None:
    require_etcd()
    user = tmp_path / "mld.yaml"
    user.write_text(yaml.safe_dump({"node": {"id": "gw-1", "state_dir": str(tmp_path / "s")}}))
    stack = GatewayStack(
        StackOptions(outside="eth0", inside="eth1", config=str(user), run_dir=tmp_path / "run",
                     etcd_port=0, rag=False),
    )  # fmt: skip
    local = stack.local_etcd
    assert local is not None and local.pki_dir is not None
    assert stack.cfg.control.credentials_dir == str(local.pki_dir)
    assert stat.S_IMODE(os.stat(local.pki_dir).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in local.pki_dir.glob("*key.pem"))
    try:
        stack.supervisor.start("etcd")
        stack._wait(time.monotonic() + 30, "etcd", stack._etcd_answers, child="etcd")
        stack._enable_rbac()
        endpoint = local.endpoint
        prefix = stack.cfg.control.prefix

        # No certificate: nothing, in plaintext or TLS with the public CA certificate.
        for cfg in (
            ControlConfig(endpoints=(endpoint,), timeout_s=1.0),
            ControlConfig(endpoints=(endpoint,), ca_cert=str(local.pki_dir / "ca.pem"),
                          timeout_s=1.0),
        ):  # fmt: skip
            with pytest.raises(ControlPlaneError):
                etcd = EtcdClient.connect(cfg)
                try:
                    etcd.put(f"{prefix}/config/firewall/allowlist", "[0.0.0.0/0]")
                finally:
                    etcd.close()

        def as_user(name: str) -> EtcdClient:
            return EtcdClient.connect(stack.cfg.control, user=name)

        sniffer = as_user("sniffer")
        try:
            for key in (
                f"{prefix}/config/firewall/block_threshold",
                f"{prefix}/services/firewall/gw-1",
                f"{prefix}/services/detector/gw-1",
                f"{prefix}/status/firewall/gw-1/health",
            ):
                with pytest.raises(ControlPlaneError, match="permission denied"):
                    sniffer.put(key, "0.1")
            # Its own keys: registration, status, public key; and reading the config.
            sniffer.put(f"{prefix}/services/sniffer/gw-1", "{}")
            sniffer.put(f"{prefix}/status/sniffer/gw-1/health", "{}")
            sniffer.put(f"{prefix}/keys/gw-1", "x")
            assert sniffer.get_prefix(f"{prefix}/config/") == []
            with pytest.raises(ControlPlaneError, match="permission denied"):
                sniffer.put("/elsewhere", "1")
        finally:
            sniffer.close()
        # The operator (mld config set) writes the config; a component cannot.
        operator = as_user("operator")
        try:
            operator.put(f"{prefix}/config/firewall/ttl_base_s", "600")
            with pytest.raises(ControlPlaneError, match="permission denied"):
                operator.put(f"{prefix}/services/firewall/gw-1", "{}")
        finally:
            operator.close()
        firewall = as_user("firewall")
        try:
            with pytest.raises(ControlPlaneError, match="permission denied"):
                firewall.put(f"{prefix}/config/firewall/ttl_base_s", "1")
            firewall.put(f"{prefix}/services/firewall/gw-1", "{}")
        finally:
            firewall.close()
        assert stack.status() is not None  # the stack's own client (operator) still reads
    finally:
        stack.stop()
