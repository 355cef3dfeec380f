"""Prometheus ``/metrics`` for every service (one port each; the ``metrics`` section).

A service exposes the counters it already keeps (its ``health()`` snapshot: the same
numbers ``mld status`` shows from etcd) as gauges named ``mld_<component>_<counter>``
(dots become underscores), plus ``mld_<component>_up`` (1 while its state is "ok") and
whatever metrics it registers itself in its registry (the detector's inference-time
histogram). The counters are read from the snapshot, never from the service's own
structures, because the HTTP server runs in its own thread.

A port already in use is not fatal: the service says so and runs without /metrics.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

__all__ = ["MetricsConfig", "MetricsServer", "serve_metrics"]

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[str, Mapping[str, object]]]
_BAD = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class MetricsConfig:
    # Address the /metrics servers listen on (0.0.0.0 for a Prometheus elsewhere).
    host: str = "127.0.0.1"
    # Port of each service's /metrics; 0 picks a free port (logged), -1 turns it off.
    sniffer_port: int = 9571
    # (mld detector run)
    detector_port: int = 9572
    # (mld firewall run)
    firewall_port: int = 9573
    # (mld rag run)
    rag_port: int = 9574

    def port_of(self, component: str) -> int:
        return int(getattr(self, f"{component}_port"))


class _HealthCollector:
    """The service's health and counters as gauges (a prometheus_client collector: the
    registry calls ``collect``). prometheus_client is imported when a server starts, not
    with the config (its HTTP server modules took 80 ms of every command's start-up)."""

    def __init__(self, component: str, health: HealthFn) -> None:
        self.component = component
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            state, counters = self.health()
        except Exception:  # a failing snapshot must not take /metrics down
            log.exception("%s: reading the counters for /metrics failed", self.component)
            state, counters = "error", {}
        prefix = f"mld_{self.component}_"
        up = GaugeMetricFamily(prefix + "up", f"1 while the {self.component} says it is ok")
        up.add_metric([], 1.0 if state == "ok" else 0.0)
        yield up
        for key, value in sorted(counters.items()):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = prefix + _BAD.sub("_", str(key))
            yield GaugeMetricFamily(name, f"{self.component} counter {key}", value=float(value))


@dataclass
class MetricsServer:
    port: int
    _server: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    component: str,
    cfg: MetricsConfig,
    health: HealthFn,
    registry: CollectorRegistry | None = None,
) -> MetricsServer | None:
    """Start ``component``'s /metrics server; None when it is turned off or its port is
    taken (logged)."""
    from prometheus_client import CollectorRegistry, start_http_server

    port = cfg.port_of(component)
    if port < 0:
        return None
    registry = registry or CollectorRegistry()
    registry.register(_HealthCollector(component, health))
    try:
        server, _thread = start_http_server(port, addr=cfg.host, registry=registry)
    except OSError as exc:
        log.warning(
            "%s: no /metrics: cannot listen on %s:%d (%s); set metrics.%s_port (0 picks "
            "a free port, -1 turns it off)",
            component,
            cfg.host,
            port,
            exc.strerror,
            component,
        )
        return None
    bound = int(server.server_port)
    log.info("%s: metrics on http://%s:%d/metrics", component, cfg.host, bound)
    return MetricsServer(bound, server)
