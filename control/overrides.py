"""etcd config overrides applied over the config file, and the last good set on disk.

An override is one setting by its mld.yaml name (``detector.thresholds.alert``) and a
YAML value (``0.6``). :func:`apply_overrides` applies a set over the file's config with
the same checks as the file (base.config_loader.replace_path) plus the component's own
``validate``. :class:`LastGood` keeps the accepted set in the node's state directory, so
a service that starts while etcd is unreachable runs with the settings it had.

What etcd may set at all is narrow (issue 19, finding 2): :func:`check_settable` lets
through only the component's live settings (thresholds, TTLs, rates, the allowlist, the
log level: what the service applies while running) and refuses everything else, paths,
peers, key files, endpoints, the pin folder that reaches the BPF compiler, with a reason
that says to change it in mld.yaml. Networks in a value are bounded too: never wider
than ``control.override_min_prefix_v4``/``_v6`` (so never 0.0.0.0/0 or ::/0), except
the entries the file itself already has.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from base.errors import ConfigError

__all__ = [
    "LastGood",
    "NetworkBounds",
    "Validator",
    "apply_override",
    "changed_keys",
    "check_settable",
    "is_live",
    "parse_value",
]

log = logging.getLogger(__name__)

Validator = Callable[[Any], None]


def parse_value(raw: bytes | str, *, key: str) -> object:
    """The YAML value of an override (JSON is YAML too)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: the value {text!r} is not valid YAML ({exc})") from None


def is_live(dotted: str, live: Sequence[str]) -> bool:
    """Is ``dotted`` one of the ``live`` prefixes, or inside one?"""
    return any(dotted == p or dotted.startswith(p + ".") for p in live)


class NetworkBounds:
    """The widest networks an etcd override may name: IPv4 prefixes of at least
    ``min_v4`` bits, IPv6 of at least ``min_v6``; /0 never."""

    def __init__(self, min_v4: int, min_v6: int) -> None:
        self.min = {4: max(1, min_v4), 6: max(1, min_v6)}

    def check(self, dotted: str, value: object, allowed: Iterable[object] = ()) -> None:
        """ConfigError when ``value`` (a string or a list of strings) names a network
        wider than the bound; the entries in ``allowed`` (the file's) are not checked."""
        kept = {str(a) for a in allowed}
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, str) or "/" not in item or item in kept:
                continue
            try:
                net = ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                continue  # not a network: the setting's own type check says what is wrong
            bound = self.min[net.version]
            if net.prefixlen < bound:
                raise ConfigError(
                    f"{dotted}: {item} is wider than etcd may set (at most /{bound} for "
                    f"IPv{net.version}, control.override_min_prefix_v{net.version}); put "
                    "a network that wide in mld.yaml on the node if you really mean it"
                )


def check_settable(
    dotted: str,
    raw: bytes | str,
    *,
    live: Sequence[str],
    bounds: NetworkBounds,
    file_value: object = None,
) -> None:
    """ConfigError unless etcd may set ``dotted`` to ``raw``: only the live settings,
    and their networks within ``bounds`` (the file's own entries excepted)."""
    if not is_live(dotted, live):
        shown = ", ".join(live) if live else "none"
        raise ConfigError(
            f"{dotted} cannot be set from etcd: only the live settings can ({shown}); "
            "paths, peers, keys, endpoints and the like are set in mld.yaml on the node "
            f"(then restart the service). Delete the key: etcdctl del {dotted!r} under "
            "the component's config prefix, or `mld config unset`"
        )
    allowed = file_value if isinstance(file_value, list | tuple) else [file_value]
    bounds.check(dotted, parse_value(raw, key=dotted), allowed)


def apply_override(config: Any, dotted: str, raw: bytes | str, *, source: str) -> Any:
    """``config`` with one override applied and checked; ConfigError names what is wrong."""
    # Imported here: the config package imports every component's settings, and the
    # components import control/.
    from base.config_loader import replace_path

    return replace_path(config, dotted, parse_value(raw, key=dotted), source=source)


def _flatten(value: object, prefix: str, out: dict[str, object]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def changed_keys(old: Any, new: Any) -> tuple[str, ...]:
    """Dotted names of the settings that differ between two configs."""
    from base.config_loader import to_dict

    a: dict[str, object] = {}
    b: dict[str, object] = {}
    _flatten(to_dict(old), "", a)
    _flatten(to_dict(new), "", b)
    return tuple(sorted(k for k in a.keys() | b.keys() if a.get(k, a) != b.get(k, b)))


class LastGood:
    """The accepted overrides of one component instance, in a small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, overrides: Mapping[str, str]) -> None:
        data = {"saved_ts": time.time(), "overrides": dict(overrides)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning(
                "cannot save the last good config to %s (%s): a restart while etcd is "
                "unreachable will use the config file alone",
                self.path,
                exc.strerror,
            )

    def load(self) -> tuple[dict[str, str], float | None]:
        """The saved overrides and when they were saved; ({}, None) if there are none."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            overrides = {str(k): str(v) for k, v in data["overrides"].items()}
            return overrides, float(data["saved_ts"])
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring the unreadable last good config %s: %s", self.path, exc)
            return {}, None
