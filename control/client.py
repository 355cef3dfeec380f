"""The etcd client at the boundary: every etcd3 and gRPC error becomes a project error.

``EtcdClient.connect`` tries each endpoint of ``control.endpoints`` in turn and keeps the
first that answers a status request. Requests time out after ``control.timeout_s``.
Failures are translated here, so the rest of ``control/`` catches project errors only:

* :class:`~base.errors.EtcdUnavailable`: nothing answered in time (down, partitioned,
  restarting); callers retry with backoff;
* :class:`~base.errors.ControlPlaneError`: etcd answered with a refusal (wrong password,
  no permission for the key, TLS mismatch) or a request was malformed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import etcd3
import etcd3.events
import etcd3.exceptions
import grpc

from base.errors import ControlPlaneError, EtcdUnavailable
from control.config import ControlConfig, is_loopback

__all__ = ["EtcdClient", "KeyValue", "WatchEvent"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix; ``value`` is empty for a delete."""

    key: str
    value: bytes
    deleted: bool


def translate(exc: BaseException, what: str, endpoint: str) -> ControlPlaneError:
    """The project error for an etcd3 or gRPC exception raised while doing ``what``."""
    if isinstance(
        exc,
        etcd3.exceptions.ConnectionFailedError
        | etcd3.exceptions.ConnectionTimeoutError
        | etcd3.exceptions.NoServerAvailableError
        | etcd3.exceptions.WatchTimedOut,
    ):
        return EtcdUnavailable(
            f"etcd at {endpoint} did not answer ({what}): {exc or 'timeout'}; is it running, "
            "and do control.ca_cert, control.cert and control.key match its TLS setup? (the "
            "etcd mld starts requires the certificates it made in control.credentials_dir, "
            "by default <node.state_dir>/etcd-pki)"
        )
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if code in _UNAVAILABLE:
            return EtcdUnavailable(f"etcd at {endpoint} did not answer ({what}): {detail}")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return ControlPlaneError(
                f"etcd at {endpoint} refused {what}: {detail}; check control.user, "
                "control.password_file and the role's permissions on the key prefix"
            )
        return ControlPlaneError(f"etcd at {endpoint} refused {what}: {detail}")
    if isinstance(exc, etcd3.exceptions.Etcd3Exception):
        return ControlPlaneError(f"etcd at {endpoint} failed {what}: {type(exc).__name__} {exc}")
    return ControlPlaneError(f"etcd client failed {what}: {type(exc).__name__}: {exc}")


def _boundary(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ControlPlaneError:
                raise
            except (etcd3.exceptions.Etcd3Exception, grpc.RpcError, ValueError) as exc:
                self = args[0]
                raise translate(exc, what, getattr(self, "endpoint", "?")) from exc

        return call

    return wrap


def _password(cfg: ControlConfig) -> str | None:
    if not cfg.password_file:
        return None
    path = Path(cfg.password_file)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ControlPlaneError(
            f"cannot read control.password_file {path}: {exc.strerror}; "
            "write the etcd user's password there (mode 0600)"
        ) from exc
    if path.stat().st_mode & 0o077:
        raise ControlPlaneError(
            f"control.password_file {path} is readable by others: chmod 600 {path}"
        )
    return text


def _tls_files(cfg: ControlConfig) -> dict[str, str | None]:
    files = {"ca_cert": cfg.ca_cert, "cert_cert": cfg.cert, "cert_key": cfg.key}
    for name, value in files.items():
        if value and not Path(value).is_file():
            raise ControlPlaneError(
                f"TLS file {value} (control.{'cert' if name == 'cert_cert' else name}) "
                "does not exist; see control/README.md for making the certificates"
            )
    if cfg.key and Path(cfg.key).stat().st_mode & 0o077:
        raise ControlPlaneError(
            f"control.key {cfg.key} is readable by others: chmod 600 {cfg.key} (whoever "
            "reads it is this node in etcd)"
        )
    return {name: value or None for name, value in files.items()}


class EtcdClient:
    """One connection to an etcd cluster, with project errors."""

    def __init__(self, client: Any, endpoint: str, timeout_s: float) -> None:
        self._client = client
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    @classmethod
    def connect(cls, cfg: ControlConfig, user: str = "operator") -> EtcdClient:
        """Connect to the first endpoint that answers; EtcdUnavailable if none does.
        With ``control.credentials_dir`` and no TLS files given, authenticate as
        ``user`` with the certificate mld made there (a service's session passes its
        component)."""
        if cfg.credentials_dir:
            cfg = cfg.with_credentials("", user)
            remote = [e for e in cfg.endpoints if not is_loopback(e.rpartition(":")[0])]
            if remote and not cfg.ca_cert and not cfg.allow_plaintext:
                raise ControlPlaneError(
                    f"control.credentials_dir {cfg.credentials_dir} has no ca.pem: put the "
                    f"etcd CA certificate there, with {user}.pem and {user}-key.pem "
                    "(control/README.md), or set control.ca_cert, cert and key"
                )
        if not cfg.endpoints:
            raise ControlPlaneError("control.endpoints is empty: there is no etcd to connect to")
        password = _password(cfg)
        tls = _tls_files(cfg)
        failures = []
        for endpoint in cfg.endpoints:
            host, _, port = endpoint.rpartition(":")
            try:
                raw = etcd3.client(
                    host=host.strip("[]"),
                    port=int(port),
                    timeout=cfg.timeout_s,
                    user=cfg.user or None,
                    password=password,
                    **tls,
                )
            except (etcd3.exceptions.Etcd3Exception, grpc.RpcError, ValueError) as exc:
                failures.append(str(translate(exc, "connecting", endpoint)))
                continue
            client = cls(raw, endpoint, cfg.timeout_s)
            try:
                client.version()
            except EtcdUnavailable as exc:
                client.close()
                failures.append(str(exc))
                continue
            except ControlPlaneError:
                client.close()
                raise
            return client
        raise EtcdUnavailable("; ".join(failures))

    @_boundary("status")
    def version(self) -> str:
        return str(self._client.status().version)

    @_boundary("reading a prefix")
    def get_prefix(self, prefix: str) -> list[KeyValue]:
        return [
            KeyValue(meta.key.decode(), value, meta.mod_revision)
            for value, meta in self._client.get_prefix(prefix)
        ]

    @_boundary("reading a key")
    def get(self, key: str) -> bytes | None:
        value, _meta = self._client.get(key)
        return None if value is None else bytes(value)

    @_boundary("writing a key")
    def put(self, key: str, value: str, lease_id: int | None = None) -> None:
        self._client.put(key, value, lease=lease_id)

    @_boundary("deleting a key")
    def delete(self, key: str) -> bool:
        return bool(self._client.delete(key))

    @_boundary("granting a lease")
    def grant(self, ttl_s: int) -> int:
        return int(self._client.lease(ttl_s).id)

    @_boundary("renewing a lease")
    def refresh(self, lease_id: int) -> int:
        """Renew a lease; returns its TTL, 0 or less when the lease no longer exists."""
        ttl = 0
        for response in self._client.refresh_lease(lease_id):
            ttl = int(response.TTL)
        return ttl

    @_boundary("revoking a lease")
    def revoke(self, lease_id: int) -> None:
        self._client.revoke_lease(lease_id)

    @_boundary("starting a watch")
    def watch_prefix(
        self, prefix: str, on_events: Callable[[list[WatchEvent] | ControlPlaneError], None]
    ) -> Callable[[], None]:
        """Call ``on_events`` (from the client's thread) with each batch of changes under
        ``prefix``, or once with the error that ended the watch. Returns a cancel function."""

        def callback(response: Any) -> None:
            if isinstance(response, BaseException):
                on_events(translate(response, "watching", self.endpoint))
                return
            on_events(list(_events(response.events)))

        watch_id = self._client.add_watch_prefix_callback(prefix, callback)

        def cancel() -> None:
            with contextlib.suppress(etcd3.exceptions.Etcd3Exception, grpc.RpcError, ValueError):
                self._client.cancel_watch(watch_id)

        return cancel

    def close(self) -> None:
        try:
            self._client.close()
        except (etcd3.exceptions.Etcd3Exception, grpc.RpcError, ValueError):
            log.debug("closing the etcd client failed", exc_info=True)


def _events(events: Any) -> Iterator[WatchEvent]:
    for event in events:
        deleted = isinstance(event, etcd3.events.DeleteEvent)
        yield WatchEvent(event.key.decode(), b"" if deleted else bytes(event.value), deleted)
