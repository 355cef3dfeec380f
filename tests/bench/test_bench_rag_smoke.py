"""bench/rag_speed.py still runs and prints its keys (speed is judged by running it)."""

from __future__ import annotations

import math

import pytest

from tests.support import bench_keys


@pytest.mark.slow
def test_rag_speed_bench_runs_and_prints_its_keys() -> None:
    values = bench_keys("rag_speed.py", timeout=300)
    for key in ("ingest_eps", "retrieval_p50_ms_1m", "answer_s_p50"):
        assert key in values, values
    numbers = {k: float(v) for k, v in values.items()}  # every value parses as a number
    assert numbers["ingest_eps"] > 0, values
    assert 0 < numbers["ingest_ratio"] < 1, "writing blobs alone is faster than ingesting"
    assert numbers["retrieval_p50_ms_10k"] > 0, values
    assert math.isnan(numbers["answer_s_p50"]), "--quick runs no model"
