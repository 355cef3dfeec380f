"""The benchmarks still run and print their key=value line (speed is judged by running
them, not here)."""

from __future__ import annotations

import pytest

from tests.support import bench_keys


@pytest.mark.slow
def test_transport_bench_runs_and_prints_its_keys() -> None:
    values = bench_keys("transport.py", timeout=300)
    for key in ("encrypted_rps", "plain_rps", "ratio", "msg_encrypted_rps", "msg_ratio"):
        assert float(values[key]) > 0, values
