"""The benchmarks still run and print their key=value line (speed is judged by running
them, not here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.slow
def test_transport_bench_runs_and_prints_its_keys() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "transport.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    values = dict(part.split("=") for part in last.split())
    for key in ("encrypted_rps", "plain_rps", "ratio", "msg_encrypted_rps", "msg_ratio"):
        assert float(values[key]) > 0, last
