"""The etcd that mld starts is authenticated by default (issue 19, finding 2).

The attack: any local user (any process on the box) connects to the etcd that
``mld etcd up`` (or ``mld gateway``, or the tests' fixture) started on 127.0.0.1 and
writes ``/mld/config/...`` or ``/mld/keys/...``: before the fix it listened in plaintext
without users, so that worked. Now it serves TLS and requires a client certificate
signed by a CA made at its first start (``<node.state_dir>/etcd-pki``, mode 0700, keys
0600), and the services' own clients find their certificates there by themselves.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from base.errors import ConfigError, ControlPlaneError, EtcdUnavailable
from control import ControlConfig, EtcdClient, EtcdServer, ServiceControl, free_port
from tests.control.support import mld_config
from tests.control.test_cli import _config_file, mld
from tests.support import require_etcd, wait_for

pytestmark = pytest.mark.etcd


def _unauthenticated_attempts(endpoint: str, ca: Path | None) -> list[str]:
    """What an attacker without a client certificate gets: each attempt that worked."""
    worked = []
    for cfg in (
        ControlConfig(endpoints=(endpoint,), timeout_s=1.0),  # plaintext, as before
        # TLS with the (public) CA certificate but no client certificate of its own.
        *([ControlConfig(endpoints=(endpoint,), ca_cert=str(ca), timeout_s=1.0)] if ca else []),
    ):
        try:
            etcd = EtcdClient.connect(cfg)
        except ControlPlaneError:
            continue
        try:
            etcd.put("/mld/config/firewall/allowlist", "[0.0.0.0/0]")
            worked.append(f"put with {cfg}")
            if etcd.get_prefix("/mld/") is not None:
                worked.append(f"read with {cfg}")
        except ControlPlaneError:
            pass
        finally:
            etcd.close()
    for scheme in ("http", "https"):
        proc = subprocess.run(
            ["etcdctl", f"--endpoints={scheme}://{endpoint}", "--dial-timeout=1s",
             "--command-timeout=2s", "--insecure-skip-tls-verify", "put", "/mld/keys/evil", "x"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if proc.returncode == 0:
            worked.append(f"etcdctl {scheme}")
    return worked


def test_mld_etcd_up_refuses_clients_without_a_certificate(tmp_path: Path) -> None:
    require_etcd()
    port = free_port()
    config = _config_file(tmp_path, f"127.0.0.1:{port}", "/mld")
    data = tmp_path / "etcd-data"
    try:
        mld("etcd", "up", "--port", str(port), "--peer-port", str(free_port()),
            "--data-dir", str(data), config=config)  # fmt: skip
        pki = tmp_path / "state" / "etcd-pki"
        assert _unauthenticated_attempts(f"127.0.0.1:{port}", pki / "ca.pem") == []
        # The credentials are the node's: a folder only root enters, keys only root reads.
        assert stat.S_IMODE(os.stat(pki).st_mode) == 0o700
        keys = sorted(pki.glob("*-key.pem"))
        assert keys and all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys)
        # The services' clients and the command line find them by themselves.
        mld("config", "set", "firewall.ttl_base_s", "600", config=config)
        listed = json.loads(mld("config", "list", "firewall", "--json", config=config).stdout)
        assert [e["value"] for e in listed] == ["600"]
        status = json.loads(mld("etcd", "status", "--data-dir", str(data), "--json",
                                config=config).stdout)  # fmt: skip
        assert status["version"].startswith("3."), status
    finally:
        mld("etcd", "down", "--data-dir", str(data), "--purge", config=config, check=False)


def test_the_tests_etcd_is_authenticated_too(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    assert etcd_server.pki_dir is not None
    assert _unauthenticated_attempts(etcd_server.endpoint, etcd_server.pki_dir / "ca.pem") == []
    # A service given the credentials folder in its config registers.
    plane = ServiceControl(
        mld_config(etcd_server, etcd_prefix, tmp_path), component="sniffer", instance="s-auth"
    )
    try:
        plane.start()
        plane.announce()
        assert plane.session is not None
        wait_for(lambda: plane.session is not None and plane.session.state.connected, 5, "conn")
    finally:
        plane.close()


@pytest.mark.parametrize("host", ["10.0.0.10", "etcd1.example", "[2001:db8::1]"])
def test_plaintext_to_another_host_is_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ConfigError, match="allow_plaintext"):
        ControlConfig(endpoints=(f"{host}:2379",))
    ControlConfig(endpoints=(f"{host}:2379",), allow_plaintext=True)
    ControlConfig(endpoints=(f"{host}:2379",), ca_cert="/etc/mld/etcd-pki/ca.pem")
    remote = ControlConfig(endpoints=(f"{host}:2379",), credentials_dir="/nonexistent/pki")
    with pytest.raises(ControlPlaneError, match=r"has no ca\.pem"):
        EtcdClient.connect(remote, user="sniffer")  # never falls back to plaintext
    ControlConfig(endpoints=("127.0.0.1:2379", "[::1]:2379", "localhost:2379"))


def test_an_etcd_without_tls_is_still_reachable_when_the_config_allows_it(
    tmp_path: Path,
) -> None:
    """An etcd of the user's own on loopback without TLS (the old lab setup) still works,
    and ``tls=False`` is what starts one: explicit, never the default."""
    require_etcd()
    with EtcdServer(tmp_path / "plain", tls=False) as server:
        assert server.pki_dir is None
        etcd = EtcdClient.connect(ControlConfig(endpoints=(server.endpoint,)))
        try:
            etcd.put("/plain/x", "1")
        finally:
            etcd.close()
    with pytest.raises(EtcdUnavailable):
        EtcdClient.connect(ControlConfig(endpoints=(server.endpoint,), timeout_s=0.5))
