"""The offline and live benchmarks still run and print their key=value line (speed is judged
by running them, not here). Peers that bench/setup-peers.sh did not install print nan."""

from __future__ import annotations

import math

import pytest

from tests.support import SHARED_DATA, bench_keys, require_root_and

DATA = SHARED_DATA / "pcaps"


@pytest.mark.slow
def test_offline_bench_runs_and_prints_its_keys() -> None:
    if not DATA.is_dir():
        pytest.skip(f"needs the shared captures in {DATA}")
    values = bench_keys("offline.py", timeout=600)
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
    values = bench_keys("live.py", timeout=600)
    for key in ("flow_pps", "empty_pps", "ratio_empty", "drop_pps", "empty_drop_pps"):
        assert float(values[key]) > 0, values
    assert values["mode"] == "native", values
    assert int(values["flows"]) >= 4096, values
