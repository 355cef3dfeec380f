"""What a service does to join the control plane, in one object.

Every service follows the same steps::

    plane = ServiceControl(cfg, component="detector", instance=detector_id, ...)
                                   # cfg: the root config (control.root.RootConfig)
    cfg = plane.start()            # file config + accepted etcd overrides (or last good)
    ... build the service from cfg, bind its sockets ...
    plane.announce({"flows": Endpoint(receiver.bound_endpoint, "push", "flows")})
    loop:
        state = plane.poll()       # between batches; None when nothing changed
        if state: apply state.config (live settings) and state.peers
    plane.close()                  # deregisters at once

Without ``control.endpoints`` the same calls work and do nothing: ``start`` returns the
file's config and ``poll`` returns None, so a service runs from the file alone with its
static endpoints. ``poll`` also keeps the keyring in step with the key directory and
applies ``logging.level``.

The commands do not write these steps themselves: ``mld/runner.py`` does, for every
service, and a service follows the plane through control.follow.FollowsControl.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Generic

from control.discovery import advertised, learned_peers, sync_keyring
from control.layout import Endpoint
from control.overrides import Validator
from control.root import C
from control.session import ControlSession, ControlState, HealthFn, default_registration
from crypto_transport import Keyring

__all__ = ["ServiceControl", "apply_log_level", "stats_from_other_thread"]

log = logging.getLogger(__name__)


def stats_from_other_thread(stats: Callable[[], Mapping[str, object]]) -> dict[str, object]:
    """A copy of a service's counters taken from the control thread, while the service
    thread may be adding a counter (the copy is tried again then); {} if it never settles.
    """
    for _ in range(5):
        try:
            return dict(stats())
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


def apply_log_level(level: str) -> None:
    """Set the root logger's level from a ``logging.level`` value."""
    logging.getLogger().setLevel(level.upper())


class ServiceControl(Generic[C]):
    """One service instance's registration, live config and discovery (or none), over a
    root config dataclass ``C`` (control.root.RootConfig)."""

    def __init__(
        self,
        config: C,
        *,
        component: str,
        instance: str,
        keyring: Keyring | None = None,
        watch: Sequence[str] = (),
        live_keys: Sequence[str] = (),
        validate: Validator | None = None,
        health: HealthFn | None = None,
        follow_log_level: bool = True,
    ) -> None:
        self.component = component
        self.instance = instance
        self.keyring = keyring
        self.follow_log_level = follow_log_level
        self._config = config
        # Shared with the keyring's DiscoveredSenders: what etcd taught, not pinned.
        self._learned: set[str] = learned_peers(keyring) if keyring is not None else set()
        self._bad_keys: set[str] = set()
        self.session: ControlSession[C] | None = None
        if config.control.enabled:
            live = tuple(live_keys) + (("logging.level",) if follow_log_level else ())
            self.session = ControlSession(
                config.control,
                component=component,
                instance=instance,
                base_config=config,
                watch=watch,
                validate=validate,
                live_keys=live,
                health=health,
            )

    @property
    def enabled(self) -> bool:
        return self.session is not None

    def start(self) -> C:
        """Connect (or fall back to the last good config) and return the config to run."""
        if self.session is None:
            return self._config
        self.session.start()
        # Not poll(): the service's first poll() must still return this state, with
        # the peers and keys known at start.
        state = self.session.state
        self._apply_common(state)
        return state.config

    def announce(self, endpoints: Mapping[str, Endpoint] | None = None) -> None:
        """Register this instance with its bound endpoints and its public key."""
        if self.session is None:
            return
        host = self._config.control.advertise_host or socket.gethostname()
        offers = {
            name: Endpoint(advertised(e.endpoint, host), e.pattern, e.channel)
            for name, e in (endpoints or {}).items()
        }
        public = self.keyring.own.public_b64 if self.keyring is not None else ""
        self.session.announce(
            default_registration(
                component=self.component,
                instance=self.instance,
                public_key=public,
                endpoints=offers,
            )
        )

    def report(self, what: str, record: Mapping[str, object]) -> None:
        """Publish a status record (own status, learned settings) under
        status/<component>/<instance>/<what>; nothing without etcd."""
        if self.session is not None:
            self.session.report(what, record)

    def poll(self) -> ControlState[C] | None:
        """The new state if anything changed; keyring and log level are already applied."""
        if self.session is None:
            return None
        state = self.session.poll()
        if state is not None:
            self._apply_common(state)
        return state

    @property
    def state(self) -> ControlState[C] | None:
        return None if self.session is None else self.session.state

    def _apply_common(self, state: ControlState[C]) -> None:
        if self.keyring is not None:
            sync_keyring(
                self.keyring, state.public_keys, self._learned, self._bad_keys, state.key_roles
            )
        if self.follow_log_level and "logging.level" in state.changed:
            apply_log_level(state.config.logging.level)
            log.info("log level is now %s (from etcd)", state.config.logging.level)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
