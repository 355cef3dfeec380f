"""A service's link to the control plane: registration, live config, discovery, keys.

One background thread per process talks to etcd; the service's own thread never blocks
on it. The service calls :meth:`ControlSession.poll` between batches and gets a new
:class:`ControlState` when something changed: the effective config (file + accepted etcd
overrides), the live instances of the components it watches, and the public-key
directory. Everything the service applies (keyring, sockets, thresholds) is applied in
its own thread, so nothing needs a lock.

The thread's loop::

    connect -> grant lease -> put registration (lease) and public key -> watch prefix
            -> read config, services and keys -> publish state
    every lease_ttl_s/3: renew the lease (lost lease: grant a new one, register again)
    every health_interval_s: put the service's health (lease)
    watch events: services/keys -> new state; config -> check, apply or refuse, status
    any etcd failure: drop the connection, wait (backoff with jitter), start again

A config change must name one of the service's live settings (``live_keys``; anything
else, a path, a peer, a key file, an endpoint, is never etcd's to set: issue 19, finding
2), with networks no wider than control.override_min_prefix_v4/_v6; it is then checked
like the file (types, unknown keys, the component's own checks) and written back under
status/<component>/<instance>/config as ``applied`` or ``refused`` with the reason.
Accepted overrides are also saved on disk (:class:`LastGood`); without etcd at start the
service runs from them and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic

from base.errors import ConfigError, ControlPlaneError, EtcdUnavailable
from control.client import EtcdClient, WatchEvent
from control.config import ControlConfig
from control.layout import (
    Registration,
    config_prefix,
    dotted_name,
    health_key,
    public_key_key,
    service_key,
    services_prefix,
    status_key,
)
from control.overrides import (
    LastGood,
    NetworkBounds,
    Validator,
    apply_override,
    changed_keys,
    check_settable,
    is_live,
)
from control.root import C

__all__ = ["ControlSession", "ControlState", "HealthFn"]

log = logging.getLogger(__name__)

# Returns the service's state ("ok", "degraded", ...) and counters, from the control thread.
HealthFn = Callable[[], tuple[str, Mapping[str, object]]]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ControlState(Generic[C]):
    """What the control plane says now; a new object on every change. ``config`` is the
    root config the session was given (the whole-house config for the services) with
    the accepted overrides applied."""

    generation: int
    config: C
    # Settings that differ from the previous state's config (dotted mld.yaml names).
    changed: tuple[str, ...] = ()
    # component -> instance id -> registration, for the components the service watches.
    peers: Mapping[str, Mapping[str, Registration]] = field(default_factory=lambda: _EMPTY)
    # instance id -> base64 X25519 public key, from the key directory; for a registered
    # instance, the key its registrations name (see ControlSession._publish).
    public_keys: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # instance id -> the components it is registered as (services/<component>/<instance>)
    # with the key of public_keys, of every component: the roles its key may send as
    # (crypto_transport channel_senders).
    key_roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: _EMPTY)
    # True while the thread holds a working etcd connection.
    connected: bool = False


class ControlSession(Generic[C]):
    """Registers one service instance and follows its config and peers in etcd.

    Generic over the root config dataclass (control.root.RootConfig): overrides are
    applied to it by their dotted names, whatever it is."""

    def __init__(
        self,
        control: ControlConfig,
        *,
        component: str,
        instance: str,
        base_config: C,
        registration: Registration | None = None,
        watch: Sequence[str] = (),
        validate: Validator | None = None,
        live_keys: Sequence[str] = (),
        state_dir: str | Path | None = None,
        health: HealthFn | None = None,
    ) -> None:
        """``live_keys`` are dotted prefixes the service applies while running (e.g.
        ``detector.thresholds``, ``logging.level``): the only settings etcd may set.
        ``validate`` gets a candidate config and raises ConfigError to refuse it."""
        # The component authenticates as itself to the etcd mld started (control/pki.py).
        state = state_dir or base_config.node.state_dir
        self.cfg = control.with_credentials(state, component)
        self.component = component
        self.instance = instance
        self.registration = registration
        self._base = base_config
        self._watch = tuple(watch)
        self._validate = validate
        self._live = tuple(live_keys)
        self._bounds = NetworkBounds(control.override_min_prefix_v4, control.override_min_prefix_v6)
        self._health = health
        self._prefix = control.prefix
        cache_dir = Path(state) / "control"
        self.last_good = LastGood(cache_dir / f"{component}-{instance}.json")
        # Accepted overrides: dotted name -> raw YAML text.
        self._overrides: dict[str, str] = {}
        # Refused overrides still in etcd (key -> raw), tried again after every change.
        self._pending: dict[str, str] = {}
        self._peers: dict[str, dict[str, Registration]] = {c: {} for c in self._watch}
        self._keys: dict[str, str] = {}
        # Every registration's etcd key -> (component, instance, the public key it names),
        # for key_roles.
        self._registered: dict[str, tuple[str, str, str]] = {}
        # (instance, directory key) pairs already warned about as not registered.
        self._disowned_seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Records of report(): status name -> record, written on every (re)registration.
        self._reports: dict[str, dict[str, object]] = {}
        self._state: ControlState[C] = ControlState(0, base_config)
        self._polled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: EtcdClient | None = None
        self._cancel_watch: Callable[[], None] | None = None
        # Watch events, the error that ended the watch, or None: "put the registration
        # and the reports again".
        self._events: queue.Queue[list[WatchEvent] | ControlPlaneError | None] = queue.Queue()
        self._lease: int | None = None
        self.counters: dict[str, int] = {
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
            "reregistrations": 0,
            "config_applied": 0,
            "config_refused": 0,
            # Key directory entries that no registration of their instance names.
            "disowned_keys": 0,
        }

    # -- the service's side ------------------------------------------------------------

    @property
    def state(self) -> ControlState[C]:
        with self._lock:
            return self._state

    @property
    def config(self) -> C:
        return self.state.config

    def start(self) -> bool:
        """Connect once (up to control.timeout_s per endpoint) and start the thread.

        Returns True when etcd answered. Otherwise the service runs from the last good
        overrides saved on disk (or the config file alone), which is logged, and the
        thread keeps retrying with backoff.
        """
        if not self.cfg.enabled:
            raise ControlPlaneError("control.endpoints is empty: run without a ControlSession")
        connected = False
        try:
            self._connect()
            connected = True
        except EtcdUnavailable as exc:
            self._start_from_last_good(exc)
        self._thread = threading.Thread(
            target=self._run, name=f"control-{self.component}", daemon=True
        )
        self._thread.start()
        return connected

    def announce(self, registration: Registration) -> None:
        """Publish (or replace) this instance's registration: call once its sockets are
        bound, so the endpoints in it are real. Safe from any thread."""
        self.registration = registration
        self._events.put(None)

    def report(self, what: str, record: Mapping[str, object]) -> None:
        """Write ``record`` (JSON) under status/<component>/<instance>/<what>, under the
        lease: a component's own status or learned settings. Safe from any thread; kept
        and written again after a reconnection."""
        if not what or "/" in what or what in ("health", "config"):
            raise ControlPlaneError(
                f"status name {what!r}: use one word other than 'health' and 'config'"
            )
        with self._lock:
            self._reports[what] = dict(record)
        self._events.put(None)

    def poll(self) -> ControlState[C] | None:
        """The state if it changed since the previous poll, else None (never blocks)."""
        with self._lock:
            state = self._state
        if state.generation == self._polled:
            return None
        self._polled = state.generation
        return state

    def close(self, deregister: bool = True) -> None:
        """Stop the thread; revoke the lease (the registration disappears at once)."""
        self._stop.set()
        self._events.put([])
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.timeout_s * 2 + 1)
        if deregister and self._client is not None and self._lease is not None:
            try:
                self._client.revoke(self._lease)
            except ControlPlaneError as exc:
                log.info("could not deregister (%s); the lease expires on its own", exc)
        self._disconnect()

    # -- connection --------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.cfg.retry_initial_s
        failures = 0
        while not self._stop.is_set():
            if self._client is None:
                try:
                    self._connect()
                except ControlPlaneError as exc:
                    failures += 1
                    self.counters["connect_failures"] += 1
                    level = logging.WARNING if failures in (1, 10) or failures % 100 == 0 else 0
                    if level:
                        log.warning(
                            "%s: etcd unreachable (%s); retrying every %.1f-%.0f s",
                            self.component,
                            exc,
                            self.cfg.retry_initial_s,
                            self.cfg.retry_max_s,
                        )
                    self._stop.wait(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.cfg.retry_max_s)
                    continue
                if failures:
                    log.info("%s: etcd reachable again after %d attempts", self.component, failures)
                failures = 0
                delay = self.cfg.retry_initial_s
            try:
                self._serve()
            except ControlPlaneError as exc:
                if self._stop.is_set():
                    break
                self.counters["disconnects"] += 1
                log.warning("%s: lost etcd (%s); reconnecting", self.component, exc)
                self._disconnect()

    def _connect(self) -> None:
        client = EtcdClient.connect(self.cfg)
        self._client = client
        try:
            old_lease = self._lease
            self._lease = client.grant(self.cfg.lease_ttl_s)
            self._register()
            if old_lease is not None:
                # Gone with a restarted etcd, or expired: then there is nothing to revoke.
                with contextlib.suppress(ControlPlaneError):
                    client.revoke(old_lease)
            self._events = queue.Queue()
            self._cancel_watch = client.watch_prefix(self._prefix + "/", self._events.put)
            self._resync(client)
        except ControlPlaneError:
            self._disconnect()
            raise
        self.counters["connects"] += 1
        log.info(
            "%s/%s: registered in etcd at %s (lease %ds)",
            self.component,
            self.instance,
            client.endpoint,
            self.cfg.lease_ttl_s,
        )

    def _register(self) -> None:
        assert self._client is not None and self._lease is not None
        reg = self.registration
        if reg is not None:
            key = service_key(self._prefix, self.component, self.instance)
            self._client.put(key, reg.to_json(), self._lease)
            if reg.public_key:
                self._client.put(public_key_key(self._prefix, self.instance), reg.public_key)
        self._put_health()
        with self._lock:
            reports = dict(self._reports)
        for what, record in reports.items():
            self._put_status(what, dict(record))

    def _disconnect(self) -> None:
        if self._cancel_watch is not None:
            self._cancel_watch()
            self._cancel_watch = None
        if self._client is not None:
            self._client.close()
            self._client = None
        with self._lock:
            if self._state.connected:
                self._state = _replace(self._state, connected=False)

    # -- the connected loop ------------------------------------------------------------

    def _serve(self) -> None:
        assert self._client is not None
        renew_every = self.cfg.lease_ttl_s / 3
        next_renew = time.monotonic() + renew_every
        next_health = time.monotonic() + self.cfg.health_interval_s
        while not self._stop.is_set():
            wait = max(0.0, min(next_renew, next_health) - time.monotonic())
            try:
                item = self._events.get(timeout=wait)
            except queue.Empty:
                item = []
            if isinstance(item, ControlPlaneError):
                raise item
            if item is None:
                self._register()
            elif item:
                self._on_events(item)
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + renew_every
                if self._client.refresh(self._lease or 0) <= 0:
                    # The lease ran out (etcd lost it, or we were cut off too long).
                    self.counters["reregistrations"] += 1
                    log.warning("%s: lease expired; registering again", self.component)
                    self._lease = self._client.grant(self.cfg.lease_ttl_s)
                    self._register()
            if now >= next_health:
                next_health = now + self.cfg.health_interval_s
                self._put_health()

    def _put_health(self) -> None:
        assert self._client is not None
        try:
            state, counters = ("ok", {}) if self._health is None else self._health()
        except Exception as exc:  # a service's bug must not stop the control thread
            log.exception("%s: the health function failed", self.component)
            state, counters = "error", {"health_error": f"{type(exc).__name__}: {exc}"}
        record = {"state": state, "ts": time.time(), "counters": dict(counters)}
        record["control"] = dict(self.counters)
        # What etcd may set for this service: `mld config set` checks against it.
        record["live_keys"] = list(self._live)
        key = health_key(self._prefix, self.component, self.instance)
        self._client.put(key, json.dumps(record, sort_keys=True, default=str), self._lease)

    def _put_status(self, what: str, record: dict[str, object]) -> None:
        if self._client is None:
            return
        key = status_key(self._prefix, self.component, self.instance, what)
        record["ts"] = time.time()
        self._client.put(key, json.dumps(record, sort_keys=True), self._lease)

    # -- state -------------------------------------------------------------------------

    def _resync(self, client: EtcdClient) -> None:
        """Read everything (after a (re)connect) and publish the result."""
        for component in self._watch:
            self._peers[component] = {}
            for kv in client.get_prefix(services_prefix(self._prefix, component)):
                self._set_peer(kv.key, kv.value)
        self._registered = {}
        for kv in client.get_prefix(services_prefix(self._prefix)):
            self._note_registered(kv.key, kv.value, deleted=False)
        self._keys = {}
        for kv in client.get_prefix(f"{self._prefix}/keys/"):
            self._keys[kv.key.rsplit("/", 1)[1]] = kv.value.decode()
        entries = sorted(
            client.get_prefix(config_prefix(self._prefix, self.component)),
            key=lambda kv: kv.mod_revision,
        )
        self._overrides = {}
        self._pending = {}
        config = self._base
        for kv in entries:
            config = self._consider(config, kv.key, kv.value.decode(), deleted=False, quiet=True)
        self.last_good.save(self._overrides)
        self._publish(config, connected=True)

    def _on_events(self, events: list[WatchEvent]) -> None:
        config = self.state.config
        for event in events:
            key = event.key
            if key.startswith(config_prefix(self._prefix, self.component)):
                config = self._consider(config, key, event.value.decode(), event.deleted)
            elif key.startswith(f"{self._prefix}/keys/"):
                instance = key.rsplit("/", 1)[1]
                if event.deleted:
                    self._keys.pop(instance, None)
                else:
                    self._keys[instance] = event.value.decode()
            elif key.startswith(f"{self._prefix}/services/"):
                self._note_registered(key, event.value, event.deleted)
                component = key[len(f"{self._prefix}/services/") :].split("/", 1)[0]
                if component not in self._peers:
                    continue
                if event.deleted:
                    self._peers[component].pop(key.rsplit("/", 1)[1], None)
                else:
                    self._set_peer(key, event.value)
        self._publish(config, connected=True)

    def _note_registered(self, key: str, value: bytes, deleted: bool) -> None:
        parts = key[len(services_prefix(self._prefix)) :].split("/")
        if deleted:
            self._registered.pop(key, None)
        elif len(parts) == 2 and all(parts):
            # The key the registration names; a record without one grants nothing.
            try:
                public = json.loads(value).get("public_key")
            except (ValueError, AttributeError):
                public = None
            self._registered[key] = (parts[0], parts[1], public if isinstance(public, str) else "")

    def _set_peer(self, key: str, value: bytes) -> None:
        try:
            reg = Registration.from_json(value, key=key)
        except ControlPlaneError as exc:
            log.warning("%s: ignoring a registration: %s", self.component, exc)
            return
        if reg.component in self._peers:
            self._peers[reg.component][reg.instance] = reg

    def _consider(
        self,
        current: C,
        key: str,
        raw: str,
        deleted: bool,
        quiet: bool = False,
        retry: bool = True,
    ) -> C:
        """Apply one override change if it passes every check; write the outcome."""
        dotted = key
        try:
            dotted = dotted_name(self._prefix, self.component, key)
            candidate = dict(self._overrides)
            if deleted:
                candidate.pop(dotted, None)
            else:
                candidate[dotted] = raw
            config = self._build(candidate, source=f"etcd key {key}")
        except ConfigError as exc:
            if not deleted:
                self._pending[key] = raw
            if not retry:  # still refused on a retry: already reported when it was written
                log.debug("%s: %s is still refused: %s", self.component, key, exc)
                return current
            self.counters["config_refused"] += 1
            log.warning("%s: refused the config change %s=%r: %s", self.component, key, raw, exc)
            self._put_status(
                "config", {"key": dotted, "value": raw, "state": "refused", "reason": str(exc)}
            )
            return current
        self._pending.pop(key, None)
        self._overrides = candidate
        changed = changed_keys(current, config)
        restart = [k for k in changed if not self._is_live(k)]
        self.counters["config_applied"] += 1
        if not quiet:  # a resync saves once, after every key (_resync)
            self.last_good.save(self._overrides)
        state = "restart_required" if restart else "applied"
        if not quiet or restart:
            log.info(
                "%s: config %s %s -> %s",
                self.component,
                "deleted" if deleted else "set",
                dotted,
                state if changed else "no change",
            )
        record: dict[str, object] = {"key": dotted, "value": None if deleted else raw}
        record |= {"state": state, "changed": list(changed)}
        if restart:
            record["reason"] = f"applies when the service restarts: {', '.join(restart)}"
        if self._pending:
            record["still_refused"] = sorted(
                dotted_name(self._prefix, self.component, k) for k in self._pending
            )
        self._put_status("config", record)
        # A refused value still in etcd may be valid now (alert=0.95 refused while block
        # was 0.9, then block=0.97 accepted): etcd holds the wanted state, so try again.
        if retry:
            for pending_key, pending_raw in list(self._pending.items()):
                config = self._consider(config, pending_key, pending_raw, False, quiet, False)
        return config

    def _is_live(self, dotted: str) -> bool:
        return is_live(dotted, self._live)

    def _build(self, overrides: Mapping[str, str], *, source: str) -> C:
        config = self._base
        # Shorter names first: a whole mapping before one of its entries.
        for dotted in sorted(overrides, key=lambda k: (k.count("."), k)):
            # Only the live settings, networks within bounds (control/overrides.py);
            # also for the last good file, which an older version or a user may have
            # written.
            check_settable(
                dotted,
                overrides[dotted],
                live=self._live,
                bounds=self._bounds,
                file_value=_lookup(self._base, dotted),
            )
            config = apply_override(config, dotted, overrides[dotted], source=source)
        if self._validate is not None:
            self._validate(config)
        return config

    def _publish(self, config: C, *, connected: bool) -> None:
        with self._lock:
            old = self._state
            peers = {c: MappingProxyType(dict(p)) for c, p in self._peers.items()}
            keys, roles = self._keys_and_roles()
            key_roles = MappingProxyType(roles)
            if (
                config == old.config
                and peers == old.peers
                and keys == old.public_keys
                and key_roles == old.key_roles
                and connected == old.connected
            ):
                return
            self._state = ControlState(
                old.generation + 1,
                config,
                changed_keys(old.config, config),
                MappingProxyType(peers),
                keys,
                key_roles,
                connected,
            )

    def _keys_and_roles(self) -> tuple[Mapping[str, str], dict[str, frozenset[str]]]:
        """The key of every instance and the components it may send as.

        A registration (services/<component>/<instance>, writable by that component's
        etcd role only) grants its component to the key it names, never to whatever the
        key directory holds for the instance: every component may write keys/ (it is by
        instance id, shared by a node's services; control/rbac.py), so a taken-over
        sniffer could otherwise put its own key under a detector's id and send verdicts as
        that detector. When no registration names the directory's key (or there is none)
        but they all name one other key, that key is the instance's (a directory entry
        that differs is logged and counted as disowned_keys): overwriting or deleting
        another instance's entry neither lends its role nor locks it out."""
        keys = dict(self._keys)
        named: dict[str, dict[str, set[str]]] = {}  # instance -> key -> components
        for component, instance, public in self._registered.values():
            if public:
                named.setdefault(instance, {}).setdefault(public, set()).add(component)
        roles: dict[str, frozenset[str]] = {}
        for instance, by_key in named.items():
            listed = keys.get(instance)
            if listed not in by_key and len(by_key) == 1:
                if listed is not None and (instance, listed) not in self._disowned_seen:
                    self._disowned_seen.add((instance, listed))
                    self.counters["disowned_keys"] += 1
                    log.warning(
                        "the key directory's entry for %s is not the key its registration "
                        "as %s names: using the registration's (someone with an etcd "
                        "certificate wrote %s/keys/%s)",
                        instance,
                        "/".join(sorted(next(iter(by_key.values())))),
                        self._prefix,
                        instance,
                    )
                listed = next(iter(by_key))
                keys[instance] = listed
            if listed in by_key:
                roles[instance] = frozenset(by_key[listed])
        return MappingProxyType(keys), roles

    def _start_from_last_good(self, exc: EtcdUnavailable) -> None:
        overrides, saved_ts = self.last_good.load()
        kept: dict[str, str] = {}
        config = self._base
        for dotted, raw in overrides.items():
            try:
                config = self._build(kept | {dotted: raw}, source=str(self.last_good.path))
            except ConfigError as err:
                log.warning("last good config: skipping %s: %s", dotted, err)
                continue
            kept[dotted] = raw
        self._overrides = kept
        if saved_ts is None:
            log.warning(
                "%s: etcd unreachable at start (%s); running from the config file alone "
                "and retrying in the background",
                self.component,
                exc,
            )
        else:
            log.warning(
                "%s: etcd unreachable at start (%s); running from the last good config "
                "(%d etcd overrides saved %s) and retrying in the background",
                self.component,
                exc,
                len(kept),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved_ts)),
            )
        self._publish(config, connected=False)


def _lookup(config: Any, dotted: str) -> object:
    """The value of ``dotted`` in ``config`` (None when there is none)."""
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        if value is None:
            return None
    return value


def _replace(state: ControlState[C], **changes: Any) -> ControlState[C]:
    values = {f: getattr(state, f) for f in state.__dataclass_fields__}
    values.update(changes)
    values["generation"] = state.generation + 1
    return ControlState(**values)


def default_registration(
    *,
    component: str,
    instance: str,
    public_key: str,
    endpoints: Mapping[str, Any] | None = None,
) -> Registration:
    """A registration for this process (version, host, pid and start time filled in)."""
    from base import __version__

    return Registration(
        component=component,
        instance=instance,
        public_key=public_key,
        version=__version__,
        started_ts=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
        endpoints=dict(endpoints or {}),
    )
