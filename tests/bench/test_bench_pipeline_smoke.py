"""bench/pipeline.py still runs the live path end to end and prints its keys (speed is
judged by running it, not here)."""

from __future__ import annotations

import pytest

from tests.support import bench_keys


@pytest.mark.slow
def test_pipeline_bench_runs_and_prints_its_keys() -> None:
    values = bench_keys("pipeline.py", timeout=600)
    for key in ("pipeline_rps", "sniffer_rps", "score_only_rps", "ratio_score_only"):
        assert float(values[key]) > 0, values
    assert 0 < float(values["p50_ms"]) <= float(values["p99_ms"]), values
    # Records wait in the sniffer's publisher for their batch, never more than the timer
    # (0.2 s) and a turn of the loop: 2 s only absorbs a loaded machine.
    wait50, wait99 = float(values["batch_wait_p50_ms"]), float(values["batch_wait_p99_ms"])
    assert 0 <= wait50 <= wait99 < 2000, values
    # Every record sent was scored (the quick run sends 20000) and none was lost.
    assert int(values["records"]) == 20000 and int(values["dropped"]) == 0, values
    assert int(values["verdicts"]) > 0, values


@pytest.mark.slow
def test_pipeline_bench_with_events_delivers_every_scored_event() -> None:
    values = bench_keys("pipeline.py", "--events", timeout=600)
    assert int(values["events"]) == int(values["records"]) == 20000, values
    assert int(values["dropped"]) == 0, values
