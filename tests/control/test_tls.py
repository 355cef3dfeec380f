"""etcd with TLS client certificates and role-based auth, as a multi-host deployment runs
it (control/README.md): certificates from scripts/etcd-certs.sh, users and roles made
with etcdctl, and ControlSession connecting with the paths in its config."""

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
from tests.control.support import mld_config
from tests.support import REPO, require_etcd, wait_for

pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, Path]]:
    require_etcd()
    if shutil.which("openssl") is None or shutil.which("etcdctl") is None:
        pytest.skip("needs openssl and etcdctl (make install provides them)")
    tmp = tmp_path_factory.mktemp("etcd-tls")
    pki = tmp / "pki"
    subprocess.run(
        [str(REPO / "scripts/etcd-certs.sh"), str(pki), "127.0.0.1", "--", "root", "mld-node"],
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
        # The commands of control/README.md, "etcd with TLS and role-based auth".
        etcdctl("user", "add", "root", "--no-password")
        etcdctl("user", "grant-role", "root", "root")
        etcdctl("role", "add", "mld-node")
        etcdctl("role", "grant-permission", "mld-node", "--prefix=true", "readwrite", "/mld/")
        etcdctl("user", "add", "mld-node", "--no-password")
        etcdctl("user", "grant-role", "mld-node", "mld-node")
        etcdctl("user", "add", "mld-pw:s3cret-pw")
        etcdctl("user", "grant-role", "mld-pw", "mld-node")
        etcdctl("auth", "enable")
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
    etcd = EtcdClient.connect(_tls(server, pki, "mld-node"))
    try:
        etcd.put("/mld/tls-test", "1")
        assert etcd.get("/mld/tls-test") == b"1"
        with pytest.raises(ControlPlaneError, match="permission denied"):
            etcd.put("/elsewhere/x", "1")
    finally:
        etcd.close()


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
        etcd.put("/mld/pw-test", "1")
        with pytest.raises(ControlPlaneError, match="permission denied"):
            etcd.put("/elsewhere/y", "1")
    finally:
        etcd.close()


def test_a_service_registers_over_tls(tls_etcd: tuple[EtcdServer, Path], tmp_path: Path) -> None:
    server, pki = tls_etcd
    tls = _tls(server, pki, "mld-node")
    cfg = mld_config(
        server, "/mld/tls-svc", tmp_path, ca_cert=tls.ca_cert, cert=tls.cert, key=tls.key
    )
    plane = ServiceControl(cfg, component="firewall", instance="fw-tls")
    etcd = EtcdClient.connect(tls)
    try:
        plane.start()
        plane.announce()
        wait_for(lambda: etcd.get("/mld/tls-svc/services/firewall/fw-tls") is not None, 5, "reg")
    finally:
        plane.close()
        etcd.close()
    assert os.stat(pki / "mld-node-key.pem").st_mode & 0o077 == 0
