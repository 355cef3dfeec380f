"""Settings of the control plane (the ``control:`` section of mld.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from base.errors import ConfigError

__all__ = ["ControlConfig"]


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
        if bool(self.cert) != bool(self.key):
            raise ConfigError("control.cert and control.key go together: give both or neither")
        if self.cert and not self.ca_cert:
            raise ConfigError("control.cert needs control.ca_cert (the CA of the etcd servers)")

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)
