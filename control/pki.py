"""The credentials of an etcd that mld starts: a private CA, a server certificate, and
one client certificate per etcd user (issue 19, finding 2).

``mld etcd up``, ``mld gateway`` and the tests' etcd serve clients over TLS and require a
client certificate signed by this CA (``--client-cert-auth``); a certificate's common name
is the etcd user it authenticates as, so each component is its own user
(control/rbac.py gives each a role). Everything is made with ``openssl`` at the first
start, in a folder of mode 0700 with keys of mode 0600 (certificates 0644; the folder
keeps them from other users anyway), and reused afterwards. The CA's key stays there too:
it is what makes a certificate for a new user (``ensure_credentials`` again).

Why certificates rather than a unix socket in a 0700 folder: the Python etcd client
speaks gRPC over TCP only, the services of a gateway are separate processes that each
need their own etcd user for role-based permissions (a socket's file mode cannot tell
the sniffer from the firewall agent), and the same setup then works across hosts.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from base.errors import ControlPlaneError

__all__ = ["COMPONENT_USERS", "OPERATOR", "ROOT", "Credentials", "ensure_credentials"]

# The etcd users mld makes certificates for: root (sets up the roles), operator (the
# command line: mld status, mld config), and one per component that joins the control
# plane (the ``component`` of its ControlParts).
ROOT = "root"
OPERATOR = "operator"
COMPONENT_USERS = ("sniffer", "detector", "firewall", "rag", "anomaly", "watch")
_DAYS = 3650


@dataclass(frozen=True)
class Credentials:
    """The credentials folder: ``ca.pem``, ``server.pem``/``server-key.pem`` and
    ``<user>.pem``/``<user>-key.pem``."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    def cert(self, user: str) -> Path:
        return self.folder / f"{user}.pem"

    def key(self, user: str) -> Path:
        return self.folder / f"{user}-key.pem"

    def client(self, user: str) -> dict[str, str]:
        """control.* settings that authenticate as ``user``."""
        return {"ca_cert": str(self.ca), "cert": str(self.cert(user)), "key": str(self.key(user))}


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"openssl {args[0]} failed making etcd credentials in {cwd}: "
            f"{proc.stderr.strip()[-300:]}"
        )


def _san(hosts: Iterable[str]) -> str:
    names = []
    for host in dict.fromkeys(hosts):
        try:
            ipaddress.ip_address(host.strip("[]"))
            names.append(f"IP:{host.strip('[]')}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def _sign(folder: Path, name: str, cn: str, extensions: str) -> None:
    """``name``.pem and ``name``-key.pem: a P-256 key and a certificate for ``cn``."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        work = Path(tmp)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", f"/CN={cn}", "-keyout", "key.pem", "-out", "req.csr",
                 cwd=work)  # fmt: skip
        (work / "ext.cnf").write_text(extensions + "\n")
        _openssl("x509", "-req", "-in", "req.csr", "-CA", str(folder / "ca.pem"),
                 "-CAkey", str(folder / "ca-key.pem"), "-CAcreateserial", "-days", str(_DAYS),
                 "-out", "cert.pem", "-extfile", "ext.cnf", cwd=work)  # fmt: skip
        os.chmod(work / "key.pem", 0o600)
        os.chmod(work / "cert.pem", 0o644)
        # The key first: a certificate without its key is never left behind.
        os.replace(work / "key.pem", folder / f"{name}-key.pem")
        os.replace(work / "cert.pem", folder / f"{name}.pem")


def ensure_credentials(
    folder: str | Path, hosts: Sequence[str] = (), users: Sequence[str] = ()
) -> Credentials:
    """Make what is missing in ``folder``: the CA, a server certificate valid for
    loopback and ``hosts``, and a client certificate per user (root, operator, the
    components, and ``users``). The folder is made (or set) 0700."""
    if shutil.which("openssl") is None:
        raise ControlPlaneError(
            "openssl is not installed, and the etcd mld starts needs it once to make its "
            "TLS credentials: apt-get install openssl"
        )
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    creds = Credentials(path)
    old_umask = os.umask(0o077)
    try:
        if not creds.ca.exists() or not (path / "ca-key.pem").exists():
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-days", str(_DAYS), "-subj", "/CN=mld-etcd-ca",
                     "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=path)  # fmt: skip
            os.chmod(path / "ca-key.pem", 0o600)
            os.chmod(creds.ca, 0o644)
            for stale in path.glob("*.pem"):  # signed by a CA that is gone
                if stale.name not in ("ca.pem", "ca-key.pem"):
                    stale.unlink()
        wanted = ["127.0.0.1", "::1", "localhost", *hosts]
        hosts_file = path / "server.hosts"
        known = hosts_file.read_text().split() if hosts_file.exists() else []
        if not creds.server_cert.exists() or not set(wanted) <= set(known):
            names = sorted(set(wanted) | set(known))
            usage = "extendedKeyUsage=serverAuth,clientAuth"
            _sign(path, "server", "mld-etcd", f"subjectAltName={_san(names)}\n{usage}")
            hosts_file.write_text(" ".join(names) + "\n")
        for user in dict.fromkeys((ROOT, OPERATOR, *COMPONENT_USERS, *users)):
            if not creds.cert(user).exists() or not creds.key(user).exists():
                _sign(path, user, user, "extendedKeyUsage=clientAuth")
        (path / "ca.srl").unlink(missing_ok=True)
    finally:
        os.umask(old_umask)
    return creds
