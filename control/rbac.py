"""Roles of the etcd that mld starts: each component is its own etcd user (issue 19,
finding 2).

Once the etcd that ``mld etcd up`` or ``mld gateway`` started answers, :func:`enable_rbac`
makes, with the root certificate and ``etcdctl``, one role per user of control/pki.py
and turns auth on. Under the deployment prefix P (``control.prefix``):

=============  =========================================================================
user/role      may
=============  =========================================================================
root           everything (etcd's root role): only for setting up users and roles
operator       read P/; write P/config/ (``mld config set``, ``mld status``)
<component>    read P/ (config, discovery, keys); write only P/services/<component>/,
               P/status/<component>/ and P/keys/ (its public key)
=============  =========================================================================

So the sniffer's certificate cannot change the firewall's settings, register as a
detector or write another component's status. It can still write under P/keys/ (the key
directory is by instance id, shared by a node's services); pinned peers
(``transport.peers``) are never replaced from there (control/discovery.py), and a
registration grants its component only to the key it names, which stays the instance's
whatever keys/ says (control/session.py, ``_keys_and_roles``). It is done
once per data folder: a marker file ``mld-rbac`` in the data folder records the prefix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from base.errors import ControlPlaneError
from control.pki import COMPONENT_USERS, OPERATOR, ROOT, Credentials

__all__ = ["enable_rbac", "permissions"]


def permissions(prefix: str) -> dict[str, list[tuple[str, str]]]:
    """Role -> [(permission, key prefix)] for a deployment under ``prefix``."""
    roles = {OPERATOR: [("read", f"{prefix}/"), ("readwrite", f"{prefix}/config/")]}
    for component in COMPONENT_USERS:
        roles[component] = [
            ("read", f"{prefix}/"),
            ("readwrite", f"{prefix}/services/{component}/"),
            ("readwrite", f"{prefix}/status/{component}/"),
            ("readwrite", f"{prefix}/keys/"),
        ]
    return roles


def enable_rbac(endpoint: str, creds: Credentials, prefix: str, data_dir: Path) -> None:
    """Users and roles for ``prefix``, then auth on; nothing when already done for this
    prefix (marker in ``data_dir``). ControlPlaneError naming the failed step."""
    marker = data_dir / "mld-rbac"
    if marker.exists():
        done = marker.read_text().split()
        if prefix in done:
            return
        raise ControlPlaneError(
            f"this etcd's roles were made for the prefix {done[0] if done else '?'}, not "
            f"{prefix}: use that control.prefix, or a new data folder (mld etcd down --purge)"
        )
    if shutil.which("etcdctl") is None:
        raise ControlPlaneError(
            "etcdctl is not installed; it sets up the users and roles of the etcd mld "
            "starts: apt-get install etcd-client"
        )
    base = [
        "etcdctl", f"--endpoints=https://{endpoint}", f"--cacert={creds.ca}",
        f"--cert={creds.cert(ROOT)}", f"--key={creds.key(ROOT)}", "--command-timeout=10s",
    ]  # fmt: skip

    def run(*args: str, exists_ok: bool = False) -> None:
        proc = subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0 and not (exists_ok and "already exists" in proc.stderr):
            raise ControlPlaneError(
                f"setting up etcd's roles failed at `etcdctl {' '.join(args)}`: "
                f"{proc.stderr.strip()}"
            )

    run("user", "add", ROOT, "--no-password", exists_ok=True)
    run("user", "grant-role", ROOT, "root")
    for role, grants in permissions(prefix).items():
        run("role", "add", role, exists_ok=True)
        for permission, key_prefix in grants:
            run("role", "grant-permission", role, "--prefix=true", permission, key_prefix)
        run("user", "add", role, "--no-password", exists_ok=True)
        run("user", "grant-role", role, role)
    run("auth", "enable")
    marker.write_text(prefix + "\n")
