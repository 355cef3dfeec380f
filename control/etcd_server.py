"""Run a real etcd server (Debian's etcd-server, 3.4) for the lab and the tests.

Debian ships the binary without a service manager here, so :class:`EtcdServer` starts it
itself: one member on loopback, a data directory of its own, client and peer ports that
are free (or given). ``mld etcd up/down`` use it with a pid file in the node's state
directory; the tests' session fixture uses it with a temporary directory.

It is authenticated by default (issue 19, finding 2): clients must present a certificate
signed by a CA made at the first start (control/pki.py) in ``pki_dir`` (mode 0700, keys
0600), so a local user without access to that folder can neither read nor write it.
``tls=False`` runs it in plaintext (explicitly only). With ``rbac_prefix`` every
component's user also gets its own role under that prefix (control/rbac.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from base.errors import ControlPlaneError
from control.pki import Credentials, ensure_credentials

__all__ = ["EtcdServer", "ServerTls", "free_port"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


@dataclass(frozen=True)
class ServerTls:
    """TLS of the client port: the server's certificate and key, and the CA whose client
    certificates it accepts (``--client-cert-auth``)."""

    cert: Path
    key: Path
    client_ca: Path


class EtcdServer:
    """One etcd member on ``host``; :meth:`start` returns once it serves requests."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        binary: str = "etcd",
        log_file: str | Path | None = None,
        name: str = "mld",
        tls: ServerTls | bool = True,
        pki_dir: str | Path | None = None,
        rbac_prefix: str | None = None,
    ) -> None:
        """``tls``: True (the default) makes or reuses the credentials in ``pki_dir``
        (default: ``<data_dir>-pki`` beside the data) and requires client certificates;
        a ServerTls uses certificates of your own; False serves plaintext."""
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.binary = binary
        self.log_file = Path(log_file) if log_file else self.data_dir.with_suffix(".log")
        self.name = name
        self.credentials: Credentials | None = None
        self.pki_dir: Path | None = None
        if tls is True:
            self.pki_dir = (
                Path(pki_dir) if pki_dir else self.data_dir.with_name(self.data_dir.name + "-pki")
            )
            self.credentials = Credentials(self.pki_dir)
            tls = ServerTls(
                self.credentials.server_cert, self.credentials.server_key, self.credentials.ca
            )
        self.tls: ServerTls | None = tls or None
        self.rbac_prefix = rbac_prefix
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """host:port for control.endpoints."""
        return f"{self.host}:{self.client_port}"

    def client_settings(self, user: str = "root") -> dict[str, str]:
        """control.* TLS settings that authenticate as ``user`` (empty without TLS made
        here)."""
        return {} if self.credentials is None else self.credentials.client(user)

    def prepare(self) -> None:
        """Make the credentials (first start) and the data folder; start() calls it, a
        supervisor that runs :meth:`command` itself calls it first."""
        if self.credentials is not None:
            hosts = () if self.host in ("127.0.0.1", "localhost", "::1") else (self.host,)
            ensure_credentials(self.credentials.folder, hosts)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        tls = []
        if self.tls is not None:
            tls = [
                "--cert-file",
                str(self.tls.cert),
                "--key-file",
                str(self.tls.key),
                "--client-cert-auth",
                "--trusted-ca-file",
                str(self.tls.client_ca),
            ]
        return [
            self.binary,
            *tls,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--log-level",
            "warn",
            # Services rewrite their health every few seconds: without compaction etcd
            # keeps every revision and its memory grows without end (bench/soak.py saw
            # 41 MB/h). Keep ten minutes of history.
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "10m",
        ]

    def start(self, timeout_s: float = 15.0, detach: bool = False) -> EtcdServer:
        """Start etcd and wait until its client port answers; ``detach`` puts it in its
        own session so it outlives this process (``mld etcd up``)."""
        if shutil.which(self.binary) is None:
            raise ControlPlaneError(
                f"the etcd binary {self.binary!r} is not installed: "
                "apt-get install etcd-server (or run `make install`)"
            )
        if _listening(self.host, self.client_port):
            raise ControlPlaneError(
                f"{self.host}:{self.client_port} is already in use: stop what listens "
                "there (`mld etcd down`) or pick another port"
            )
        self.prepare()
        out = open(self.log_file, "ab")  # noqa: SIM115 (handed to the child)
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ControlPlaneError(
                    f"etcd exited with status {self.process.returncode} at start; "
                    f"see {self.log_file}"
                )
            if self._healthy():
                if self.rbac_prefix is not None and self.credentials is not None:
                    from control.rbac import enable_rbac

                    try:
                        enable_rbac(self.endpoint, self.credentials, self.rbac_prefix,
                                    self.data_dir)  # fmt: skip
                    except ControlPlaneError:
                        self.stop()
                        raise
                return self
            time.sleep(0.05)
        self.stop(kill=True)
        raise ControlPlaneError(
            f"etcd did not answer within {timeout_s:.0f} s; see {self.log_file}"
        )

    def _healthy(self) -> bool:
        """Does etcd answer /health? Over TLS with the root certificate when the
        credentials are ours; with certificates of the caller's own, an open port."""
        import ssl
        import urllib.request

        context = None
        if self.tls is not None:
            if self.credentials is None:
                return _listening(self.host, self.client_port)
            context = ssl.create_default_context(cafile=str(self.credentials.ca))
            context.load_cert_chain(
                str(self.credentials.cert("root")), str(self.credentials.key("root"))
            )
        scheme = "http" if self.tls is None else "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"{scheme}://{host}:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=0.5, context=context) as reply:
                return b'"true"' in reply.read()
        except OSError:
            return False

    def stop(self, kill: bool = False, timeout_s: float = 10.0) -> None:
        """Stop etcd (SIGTERM, or SIGKILL with ``kill``: a crash) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
