"""etcd with TLS client certificates and role-based auth, as a multi-host deployment runs
it (control/README.md): certificates from scripts/etcd-certs.sh, a role per component
made with etcdctl (control/rbac.py runs the README's commands), and ControlSession
connecting with the paths in its config."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.errors import ControlPlaneError, EtcdUnavailable
from control import ControlConfig, EtcdClient, EtcdServer, ServiceControl
from control.etcd_server import ServerTls
from control.pki import Credentials
from control.rbac import enable_rbac
from tests.control.support import mld_config
from tests.support import REPO, require_etcd, wait_for

pytestmark = pytest.mark.etcd

USERS = ["root", "operator", "sniffer", "detector", "firewall", "rag", "anomaly", "watch"]


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, Path]]:
    require_etcd()
    if shutil.which("openssl") is None or shutil.which("etcdctl") is None:
        pytest.skip("needs openssl and etcdctl (make install provides them)")
    tmp = tmp_path_factory.mktemp("etcd-tls")
    pki = tmp / "pki"
    subprocess.run(
        [str(REPO / "scripts/etcd-certs.sh"), str(pki), "127.0.0.1", "--", *USERS],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = EtcdServer(
        tmp / "data", tls=ServerTls(pki / "server.pem", pki / "server-key.pem", pki / "ca.pem")
    ).start()

    def etcdctl(*args: str) -> None:
        subprocess.run(
            ["etcdctl", f"--endpoints=https://{server.endpoint}", f"--cacert={pki}/ca.pem",
             f"--cert={pki}/root.pem", f"--key={pki}/root-key.pem", *args],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    try:
        # A password user with the firewall's role, then the roles of control/README.md,
        # "etcd across hosts" (control/rbac.py runs those commands) and auth on.
        etcdctl("user", "add", "mld-pw:s3cret-pw")
        enable_rbac(server.endpoint, Credentials(pki), "/mld", tmp)
        etcdctl("user", "grant-role", "mld-pw", "firewall")
        yield server, pki
    finally:
        server.stop()


def _tls(server: EtcdServer, pki: Path, who: str, **extra: str) -> ControlConfig:
    return ControlConfig(
        endpoints=(server.endpoint,),
        ca_cert=str(pki / "ca.pem"),
        cert=str(pki / f"{who}.pem"),
        key=str(pki / f"{who}-key.pem"),
        **extra,  # type: ignore[arg-type]
    )


def test_a_client_certificate_is_the_user_and_its_role_bounds_the_keys(
    tls_etcd: tuple[EtcdServer, Path],
) -> None:
    server, pki = tls_etcd
    etcd = EtcdClient.connect(_tls(server, pki, "firewall"))
    try:
        etcd.put("/mld/services/firewall/tls-test", "1")
        assert etcd.get("/mld/services/firewall/tls-test") == b"1"
        for key in ("/elsewhere/x", "/mld/config/firewall/ttl_base_s", "/mld/services/x/y"):
            with pytest.raises(ControlPlaneError, match="permission denied"):
                etcd.put(key, "1")
    finally:
        etcd.close()
    operator = EtcdClient.connect(_tls(server, pki, "operator"))
    try:
        operator.put("/mld/config/firewall/ttl_base_s", "600")
        assert operator.get("/mld/services/firewall/tls-test") == b"1"
    finally:
        operator.close()


def test_without_a_client_certificate_nothing_is_reachable(
    tls_etcd: tuple[EtcdServer, Path],
) -> None:
    server, pki = tls_etcd
    for cfg in (
        ControlConfig(endpoints=(server.endpoint,), ca_cert=str(pki / "ca.pem")),
        ControlConfig(endpoints=(server.endpoint,)),
    ):
        with pytest.raises(EtcdUnavailable, match="TLS"):
            EtcdClient.connect(cfg)


def test_password_auth_reads_the_password_file_and_refuses_an_open_one(
    tls_etcd: tuple[EtcdServer, Path], tmp_path: Path
) -> None:
    server, pki = tls_etcd
    password = tmp_path / "etcd-password"
    password.write_text("s3cret-pw\n")
    password.chmod(0o644)
    cfg = _tls(server, pki, "root", user="mld-pw", password_file=str(password))
    with pytest.raises(ControlPlaneError, match="chmod 600"):
        EtcdClient.connect(cfg)
    password.chmod(0o600)
    etcd = EtcdClient.connect(cfg)
    try:
        etcd.put("/mld/status/firewall/pw-test", "1")
        with pytest.raises(ControlPlaneError, match="permission denied"):
            etcd.put("/elsewhere/y", "1")
    finally:
        etcd.close()


def test_a_service_registers_over_tls(tls_etcd: tuple[EtcdServer, Path], tmp_path: Path) -> None:
    server, pki = tls_etcd
    # Each component finds its own certificate in the folder (control.credentials_dir).
    cfg = mld_config(server, "/mld", tmp_path, credentials_dir=str(pki))
    plane = ServiceControl(cfg, component="firewall", instance="fw-tls")
    etcd = EtcdClient.connect(_tls(server, pki, "operator"))
    try:
        plane.start()
        plane.announce()
        wait_for(lambda: etcd.get("/mld/services/firewall/fw-tls") is not None, 5, "reg")
    finally:
        plane.close()
        etcd.close()
    assert os.stat(pki / "firewall-key.pem").st_mode & 0o077 == 0
