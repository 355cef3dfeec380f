"""Settings of the control plane (the ``control:`` section of mld.yaml)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from base.errors import ConfigError

__all__ = ["ControlConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address, ``[v6]`` or a name) this machine's loopback?"""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ControlConfig:
    # etcd client endpoints as host:port; empty runs every service from the config file
    # alone, with the static endpoints written in it.
    endpoints: tuple[str, ...] = ()
    # Key prefix of this deployment; several deployments can share one etcd.
    prefix: str = "/mld"
    # Lease of a service's registration, in seconds: a process that dies without
    # deregistering disappears from discovery within this time.
    lease_ttl_s: int = 5
    # Longest wait for one etcd request, in seconds.
    timeout_s: float = 2.0
    # First wait before reconnecting to an unreachable etcd, in seconds; it doubles on
    # every failure up to retry_max_s (with jitter).
    retry_initial_s: float = 0.5
    # Longest wait between reconnection attempts, in seconds.
    retry_max_s: float = 30.0
    # How often a service writes its health (state and counters) to etcd, in seconds.
    health_interval_s: float = 5.0
    # Host or address peers use to reach this node's bound endpoints when they are bound
    # to a wildcard (tcp://0.0.0.0:...); empty means the host name.
    advertise_host: str = ""
    # TLS: CA certificate that signed the etcd servers' certificates (PEM); empty: no TLS.
    ca_cert: str = ""
    # TLS client certificate and its key (PEM), for etcd's --client-cert-auth.
    cert: str = ""
    # (its private key)
    key: str = ""
    # etcd role-based auth: user name; empty: no auth.
    user: str = ""
    # File holding that user's password (one line, mode 0600); never the password itself.
    password_file: str = ""
    # Folder of the credentials made when mld starts etcd (`mld etcd up`, `mld gateway`):
    # ca.pem and <user>.pem/<user>-key.pem, one user per component. Empty:
    # <node.state_dir>/etcd-pki. Used when ca_cert/cert/key are not given and the folder
    # has them: every component then authenticates as itself.
    credentials_dir: str = ""
    # Talk to an etcd on another host without TLS. Refused unless true: anyone on the
    # path could read the keys and rewrite the config.
    allow_plaintext: bool = False
    # The widest network an etcd override may name (an allowlist entry): IPv4 prefixes
    # shorter than this are refused, and 0.0.0.0/0 always. Wider ones go in mld.yaml.
    override_min_prefix_v4: int = 8
    # (the same for IPv6; ::/0 is always refused)
    override_min_prefix_v6: int = 32

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(
                f"control.prefix {self.prefix!r} must start with '/' and not end with it "
                "(for example /mld)"
            )
        if self.lease_ttl_s < 2:
            raise ConfigError(
                f"control.lease_ttl_s is {self.lease_ttl_s}: give at least 2 seconds "
                "(the lease is renewed every third of it)"
            )
        for endpoint in self.endpoints:
            host, sep, port = endpoint.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(
                    f"control.endpoints entry {endpoint!r} is not host:port "
                    "(for example 127.0.0.1:2379)"
                )
        remote = [e for e in self.endpoints if not is_loopback(e.rpartition(":")[0])]
        if remote and not (self.ca_cert or self.credentials_dir) and not self.allow_plaintext:
            raise ConfigError(
                f"control.endpoints {', '.join(remote)} is on another host and neither "
                "control.ca_cert nor control.credentials_dir is set: the control plane would "
                "travel in plaintext. Run etcd with TLS and set control.credentials_dir (or "
                "control.ca_cert, cert and key; control/README.md), or set "
                "control.allow_plaintext: true to accept that"
            )
        if (
            not 1 <= self.override_min_prefix_v4 <= 32
            or not 1 <= self.override_min_prefix_v6 <= 128
        ):
            raise ConfigError(
                "control.override_min_prefix_v4 must be in 1..32 and "
                "control.override_min_prefix_v6 in 1..128 (/0 is never settable from etcd)"
            )
        if bool(self.cert) != bool(self.key):
            raise ConfigError("control.cert and control.key go together: give both or neither")
        if self.cert and not self.ca_cert:
            raise ConfigError("control.cert needs control.ca_cert (the CA of the etcd servers)")

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    def with_credentials(self, state_dir: str | Path, user: str) -> ControlConfig:
        """This config with the TLS settings of ``user`` from the credentials folder
        mld made when it started etcd (``credentials_dir``, else
        ``<state_dir>/etcd-pki``), when none are given and the folder has them."""
        if self.ca_cert or self.cert or self.user:
            return self
        folder = Path(self.credentials_dir or Path(state_dir) / "etcd-pki")
        ca, cert, key = folder / "ca.pem", folder / f"{user}.pem", folder / f"{user}-key.pem"
        if not ca.is_file():
            return self
        if not (cert.is_file() and key.is_file()):
            # TLS without a client certificate: etcd refuses it, and the error names
            # control.cert; `mld etcd up` again makes the certificates that are missing.
            return dataclasses.replace(self, ca_cert=str(ca))
        return dataclasses.replace(self, ca_cert=str(ca), cert=str(cert), key=str(key))
