"""`mld sniffer status`: the running sniffer's counters read from its real /metrics server
(base.metrics on a free loopback port), and a clear error when no sniffer answers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from base.metrics import MetricsConfig, serve_metrics
from sniffer.cli import SnifferUnreachable, read_metrics, status_lines
from tests.support import REPO


def test_status_reads_the_overload_and_loss_counters_from_metrics() -> None:
    counters = {
        "source.packets": 897051,
        "source.flows_created": 3657,
        "source.flows_summarised": 888427,
        "source.flood_records": 27,
        "source.evicted": 2,
        "source.final_dropped": 1,
        "source.lost_uncounted": 0,
        "source.overloaded": 1,
        "publish.records_dropped": 5,
    }
    server = serve_metrics("sniffer", MetricsConfig(sniffer_port=0), lambda: ("ok", counters))
    assert server is not None
    try:
        got = read_metrics(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    assert got["source.flows_summarised"] == 888427 and got["up"] == 1
    text = "\n".join(status_lines(got))
    assert "overload: on now; summarised 888427 new flows into 27 flood records" in text
    assert "lost 3 counted (evicted 2, ring buffer full 1 final" in text
    assert "lost uncounted 0" in text and "5 dropped" in text


def test_status_without_a_sniffer_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SnifferUnreachable, match="is `mld sniffer run` running"):
        read_metrics(f"http://127.0.0.1:{port}/metrics", timeout_s=2)
    cfg = tmp_path / "mld.yaml"
    cfg.write_text(f"metrics:\n  sniffer_port: {port}\n")
    out = subprocess.run(
        [sys.executable, "-m", "mld.cli", "sniffer", "status", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert out.returncode != 0 and "is `mld sniffer run` running" in out.stderr, out
