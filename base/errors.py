"""The one exception hierarchy of ML Defender.

Errors from ZeroMQ, etcd, BCC, FAISS and llama.cpp are translated at the boundary
into these, so callers catch project errors only::

    MldError
    ├── ConfigError            a config file or value is wrong (names the key and the file)
    ├── KeyFileError           a key file is missing, unreadable, malformed or too open
    ├── TransportError         the encrypted ZeroMQ transport cannot do what was asked
    │   └── FrameRejected      one received frame failed a check (carries the reason)
    ├── LabError               the lab cannot be built, run or torn down as asked
    ├── ModelError             a model bundle cannot be trained, compiled, loaded or validated
    ├── FirewallError          a firewall backend or the decision log failed
    ├── GatewayError           the service stack of a gateway cannot start or stay up
    ├── RagError               the event store, its indexes or the answering model failed
    ├── WatchError             the watch folder, its state file or a capture in it failed
    └── ControlPlaneError      etcd refused a request or its data is malformed
        └── EtcdUnavailable    no etcd endpoint answered in time (retry later)

Messages say what went wrong and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ControlPlaneError",
    "EtcdUnavailable",
    "FirewallError",
    "FrameRejected",
    "GatewayError",
    "KeyFileError",
    "LabError",
    "MldError",
    "ModelError",
    "RagError",
    "TransportError",
    "WatchError",
]


class MldError(Exception):
    """Base of every error ML Defender raises on purpose."""


class ConfigError(MldError):
    """A configuration file or value is invalid."""


class KeyFileError(MldError):
    """A key file is missing, unreadable, malformed or readable by others."""


class TransportError(MldError):
    """The encrypted transport failed (socket setup, unknown peer, closed channel)."""


class FrameRejected(TransportError):
    """A received frame failed a check; ``reason`` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LabError(MldError):
    """The lab (namespaces, services, traffic recipes, captures) failed."""


class ModelError(MldError):
    """A model bundle cannot be trained, compiled, loaded or validated."""


class FirewallError(MldError):
    """A firewall backend (XDP map, nftables) or the decision log failed."""


class GatewayError(MldError):
    """The service stack of a gateway (mld gateway, mld lab dev) cannot start or stay up."""


class RagError(MldError):
    """The RAG store (SQLite, FAISS) or the answering model (llama.cpp) failed."""


class WatchError(MldError):
    """The watch folder cannot be watched, its state file read, or a failed capture moved."""


class ControlPlaneError(MldError):
    """etcd refused a request (auth, permissions, bad key) or holds malformed data."""


class EtcdUnavailable(ControlPlaneError):
    """No etcd endpoint answered in time; the caller may run on and retry later."""
