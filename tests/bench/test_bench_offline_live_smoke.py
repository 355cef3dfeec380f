"""The offline and live benchmarks still run and print their key=value line (speed is judged
by running them, not here). Peers that bench/setup-peers.sh did not install print nan."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.support import REPO, SHARED_DATA, require_root_and

DATA = SHARED_DATA / "pcaps"


def _last_line(script: str, timeout: float) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return dict(part.split("=", 1) for part in last.split())


@pytest.mark.slow
def test_offline_bench_runs_and_prints_its_keys() -> None:
    if not DATA.is_dir():
        pytest.skip(f"needs the shared captures in {DATA}")
    values = _last_line("offline.py", timeout=600)
    assert float(values["mld_pps"]) > 0, values
    for key in ("suricata_pps", "nfstream_pps", "ratio_suricata", "ratio_nfstream"):
        x = float(values[key])  # a peer that is not installed prints nan
        assert math.isnan(x) or x > 0, values
    assert int(values["packets"]) == 50_000, values


@pytest.mark.slow
@pytest.mark.bpf
@pytest.mark.netns
def test_live_bench_runs_and_prints_its_keys() -> None:
    require_root_and("ip", "nsenter", "taskset", "cc")
    values = _last_line("live.py", timeout=600)
    for key in ("flow_pps", "empty_pps", "ratio_empty", "drop_pps", "empty_drop_pps"):
        assert float(values[key]) > 0, values
    assert values["mode"] == "native", values
    assert int(values["flows"]) >= 4096, values
