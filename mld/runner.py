"""The one start-up of every long-running service: ``mld detector run``, ``mld sniffer run``,
``mld firewall run``, ``mld rag run``, ``mld anomaly run``, ``mld watch run``.

A service's run command loads the config, builds a :class:`ServiceParts` naming its
parts and hands both to :func:`run_service`, which does, always in this order::

    SIGTERM -> SystemExit                # stop="exit" only, before anything is open
    plane = parts.control.plane(cfg, health)  # ServiceControl from ControlParts; health
                                         # says "starting" until the service exists
    cfg = plane.start()                  # file config + accepted etcd overrides
    service = parts.build(cfg, plane, closing)      # closing: an ExitStack for its parts
    plane.announce(parts.endpoints(service))        # with the ports really bound
    service.attach_control(plane)        # parts.attach (control.FollowsControl)
    /metrics                             # parts.metrics: serve_metrics(component, ...)
    SIGTERM, SIGINT -> request_stop      # stop="finish": base.signals.stop_on_signals
                                         # (stop="none": the source installs its own)
    parts.run(service, plane)
  finally:
    plane.close(); metrics.close(); closing.close()   # what build opened, last first

It lives here, in the command-line layer, because it is the one place that knows the
whole-house config (``MldConfig``: control, node, metrics) and every service's parts at
once; control/ below it is generic over the root config and the services take only
their own sections. The run commands keep their own log lines, JSON output and exit
codes: those are what build registers on ``closing`` or what the command does with the
service :func:`run_service` returns.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry

from base.metrics import MetricsServer, serve_metrics
from base.signals import sigterm_raises_systemexit, stop_on_signals
from config import MldConfig
from control import Endpoint, ServiceControl
from crypto_transport import Keyring

__all__ = ["ControlParts", "Health", "Plane", "ServiceParts", "run_service"]

log = logging.getLogger(__name__)

Health = tuple[str, Mapping[str, object]]
Plane = ServiceControl[MldConfig]


S = TypeVar("S")


def _no_endpoints(_service: Any) -> Mapping[str, Endpoint]:
    return {}


def _attach(service: Any, plane: Plane) -> None:
    service.attach_control(plane)


@dataclass(frozen=True)
class ControlParts:
    """How a service appears on the control plane: who it is and what it follows."""

    # Registered as <component>/<instance> in etcd; also the /metrics port's name.
    component: str
    instance: str
    # The node's key pair, published in etcd (None: the service sends and receives nothing).
    keyring: Keyring | None = None
    # Components whose registrations the service follows (discovery).
    watch: Sequence[str] = ()
    # Settings (dotted mld.yaml prefixes) applied while running; others need a restart.
    live_keys: Sequence[str] = ()
    # Checks a candidate config (the file, an etcd change); ConfigError refuses it.
    validate: Callable[[MldConfig], None] | None = None

    def plane(self, cfg: MldConfig, health: Callable[[], Health] | None = None) -> Plane:
        """The service's ServiceControl (it does nothing without control.endpoints)."""
        return ServiceControl(
            cfg,
            component=self.component,
            instance=self.instance,
            keyring=self.keyring,
            watch=self.watch,
            live_keys=self.live_keys,
            validate=self.validate,
            health=health,
        )


@dataclass(frozen=True)
class ServiceParts(Generic[S]):
    """What one service hands the runner; everything but the first three is optional."""

    control: ControlParts
    # The service from the effective config. Whatever it opens it registers on
    # ``closing`` (closed last first after the plane and /metrics, also on failure).
    build: Callable[[MldConfig, Plane, contextlib.ExitStack], S]
    # The loop; returns when the service stopped.
    run: Callable[[S, Plane], None]
    # State and counters, from the control and /metrics threads.
    health: Callable[[S], Health] = lambda service: service.health()  # type: ignore[attr-defined]
    # The endpoints to announce, by name, once built (bound ports are real then).
    endpoints: Callable[[S], Mapping[str, Endpoint]] = _no_endpoints
    # How the service follows the plane; None: it polls the plane in ``run`` itself.
    attach: Callable[[S, Plane], None] | None = _attach
    # Serve /metrics (metrics.port_of(component)); ``registry`` adds the service's own.
    metrics: bool = True
    registry: Callable[[S], CollectorRegistry | None] = field(default=lambda _s: None)
    # "finish": SIGTERM and Ctrl-C call request_stop (logged "<SIG>: <stopping>");
    # "exit": SIGTERM raises SystemExit(143) from the start, Ctrl-C stays
    # KeyboardInterrupt (the loop flushes or cleans up in ``finally``); "none": the
    # service's source installs its own (the sniffer's XDP source, base.signals too).
    stop: Literal["finish", "exit", "none"] = "finish"
    stopping: str = "stopping"
    second_sigint_interrupts: bool = False
    request_stop: Callable[[S], Callable[[], None]] = (
        lambda service: service.request_stop  # type: ignore[attr-defined]
    )


def run_service(cfg: MldConfig, parts: ServiceParts[S]) -> S:
    """Start, run and close one service (see the module docstring); returns the service,
    stopped, for the command's summary. Errors of any step propagate (MldError: exit 1)
    after everything opened so far is closed."""
    service: S | None = None

    def health() -> Health:
        return parts.health(service) if service is not None else ("starting", {})

    if parts.stop == "exit":
        sigterm_raises_systemexit()
    plane = parts.control.plane(cfg, health)
    metrics: MetricsServer | None = None
    with contextlib.ExitStack() as closing:
        try:
            cfg = plane.start()
            service = parts.build(cfg, plane, closing)
            plane.announce(parts.endpoints(service))
            if parts.attach is not None:
                parts.attach(service, plane)
            if parts.metrics:
                metrics = serve_metrics(
                    parts.control.component, cfg.metrics, health, parts.registry(service)
                )
            if parts.stop == "finish":
                stop_on_signals(
                    parts.request_stop(service),
                    parts.stopping,
                    second_sigint_interrupts=parts.second_sigint_interrupts,
                )
            parts.run(service, plane)
        finally:
            plane.close()
            if metrics is not None:
                metrics.close()
    assert service is not None
    return service
