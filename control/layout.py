"""Where things live in etcd, and the JSON records stored there.

Under the deployment prefix (``control.prefix``, default ``/mld``)::

    services/<component>/<instance>   Registration (JSON), under the instance's lease
    status/<component>/<instance>/health   {"state", "ts", "counters"}, same lease
    status/<component>/<instance>/config   outcome of the last config change (JSON)
    config/<component>/<a>/<b>        an override of <component>.<a>.<b> of mld.yaml; the
                                      value is YAML (``0.6``, ``debug``, ``[10.0.0.0/8]``)
    config/<component>/logging/level  sections that are not a component's (logging,
                                      transport) apply to that component's process
    keys/<instance>                   the instance's X25519 public key (base64); public
                                      keys only: private keys never leave their host

An instance id is the id the service sends under (sniffer.publish.sensor_id,
detector.detector_id, ...; by default node.id, else the host name), so it is also the
peer id in every keyring. One node key serves all the services of a node.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from base.errors import ConfigError, ControlPlaneError

__all__ = [
    "COMPONENTS",
    "GLOBAL_SECTIONS",
    "Endpoint",
    "Registration",
    "config_key",
    "config_prefix",
    "dotted_name",
    "health_key",
    "public_key_key",
    "service_key",
    "services_prefix",
    "status_key",
]

COMPONENTS = ("sniffer", "detector", "firewall", "rag")
# mld.yaml sections shared by every process; config/<component>/<section>/... overrides
# them for that component's processes only.
GLOBAL_SECTIONS = ("logging", "transport", "node")


def services_prefix(prefix: str, component: str | None = None) -> str:
    return f"{prefix}/services/" + (f"{component}/" if component else "")


def service_key(prefix: str, component: str, instance: str) -> str:
    return f"{prefix}/services/{component}/{instance}"


def status_key(prefix: str, component: str, instance: str, what: str) -> str:
    return f"{prefix}/status/{component}/{instance}/{what}"


def health_key(prefix: str, component: str, instance: str) -> str:
    return status_key(prefix, component, instance, "health")


def config_prefix(prefix: str, component: str) -> str:
    return f"{prefix}/config/{component}/"


def public_key_key(prefix: str, instance: str) -> str:
    return f"{prefix}/keys/{instance}"


def config_key(prefix: str, component: str, dotted: str) -> str:
    """The etcd key of the override of ``dotted`` (a full mld.yaml name such as
    ``detector.thresholds.alert`` or ``logging.level``) for ``component``."""
    parts = dotted.split(".")
    if parts[0] == component:
        parts = parts[1:]
    elif parts[0] not in GLOBAL_SECTIONS:
        raise ControlPlaneError(
            f"{dotted!r} is not a setting of {component}: name it as {component}.<key> "
            f"or under one of {', '.join(GLOBAL_SECTIONS)}"
        )
    if not parts or "" in parts:
        raise ControlPlaneError(f"{dotted!r} names a whole section: name one setting in it")
    return config_prefix(prefix, component) + "/".join(parts)


def dotted_name(prefix: str, component: str, key: str) -> str:
    """The mld.yaml name an override key stands for (inverse of :func:`config_key`)."""
    rest = key[len(config_prefix(prefix, component)) :]
    parts = rest.split("/")
    if "" in parts or any("." in part for part in parts):
        raise ConfigError(
            f"etcd key {key!r}: write the setting's path with '/' between names "
            f"({config_prefix(prefix, component)}thresholds/alert)"
        )
    if parts[0] in GLOBAL_SECTIONS:
        return ".".join(parts)
    return ".".join([component, *parts])


@dataclass(frozen=True)
class Endpoint:
    """A socket a service offers to its peers."""

    endpoint: str  # ZeroMQ endpoint peers connect to, e.g. tcp://10.0.0.1:5571
    pattern: str  # the socket type peers use: push (to a PULL) or sub (to a PUB)
    channel: str  # channel name bound into every frame


@dataclass(frozen=True)
class Registration:
    """What a running instance publishes about itself under its lease."""

    component: str
    instance: str
    public_key: str
    version: str
    started_ts: float
    host: str
    pid: int
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str, *, key: str) -> Registration:
        try:
            data: dict[str, Any] = json.loads(text)
            endpoints = {name: Endpoint(**value) for name, value in data.pop("endpoints").items()}
            return cls(endpoints=endpoints, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ControlPlaneError(
                f"registration at {key} is malformed ({exc}); delete the key or restart "
                "the service that wrote it"
            ) from None
