"""The benchmarks still run and print their key=value line (speed is judged by running
them, not here)."""

from __future__ import annotations

import pytest

from tests.support import bench_keys, require_etcd


@pytest.mark.slow
def test_transport_bench_runs_and_prints_its_keys() -> None:
    values = bench_keys("transport.py", timeout=300)
    for key in ("encrypted_rps", "plain_rps", "ratio", "msg_encrypted_rps", "msg_ratio"):
        assert float(values[key]) > 0, values


@pytest.mark.etcd
def test_control_plane_bench_runs_and_prints_its_keys() -> None:
    require_etcd()
    values = bench_keys("control_plane.py", timeout=300)
    assert 0 < float(values["config_p50_ms"]) <= float(values["config_p99_ms"]), values
    assert float(values["kill_to_gone_s"]) >= 1.0, "the lease expires, it is not revoked"
    assert float(values["etcd_restart_to_registered_s"]) >= float(values["etcd_start_s"]) > 0
