"""The anomaly training benchmark still runs and prints its key=value line."""

from __future__ import annotations

import pytest

from tests.support import SHARED_DATA, bench_keys


@pytest.mark.slow
def test_anomaly_train_bench_runs_and_prints_its_keys() -> None:
    if not (SHARED_DATA / "pcaps").exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    values = bench_keys("anomaly_train.py", timeout=600)
    for key in ("train_s_2k", "train_s_5k", "rss_mb_5k", "flat_ratio_time", "flat_ratio_rss"):
        assert float(values[key]) > 0, values
