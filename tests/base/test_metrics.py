"""/metrics: the counters a service keeps, scraped over real HTTP."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest

from base.metrics import MetricsConfig, serve_metrics


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_counters_and_state_are_served() -> None:
    state = {"state": "ok", "n": 3}
    server = serve_metrics(
        "firewall",
        MetricsConfig(firewall_port=0),
        lambda: (str(state["state"]), {"policy.block": state["n"], "backend": "xdp"}),
    )
    assert server is not None
    try:
        got = scrape(server.port)
        assert got["mld_firewall_up"] == 1.0 and got["mld_firewall_policy_block"] == 3.0
        assert not any("backend" in name for name in got), "text values are not metrics"
        state.update(state="degraded", n=4)
        got = scrape(server.port)
        assert got["mld_firewall_up"] == 0.0 and got["mld_firewall_policy_block"] == 4.0
    finally:
        server.close()


def test_a_taken_port_or_minus_one_means_no_metrics(caplog: pytest.LogCaptureFixture) -> None:
    assert serve_metrics("rag", MetricsConfig(rag_port=-1), lambda: ("ok", {})) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING):
            assert serve_metrics("rag", MetricsConfig(rag_port=port), lambda: ("ok", {})) is None
    assert "metrics.rag_port" in caplog.text
