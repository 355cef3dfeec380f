"""The detector and firewall benchmarks still run and print their key=value line (speed is
judged by running them, not here)."""

from __future__ import annotations

import pytest

from tests.support import SHARED_DATA, bench_keys, require_root_and


@pytest.mark.slow
def test_detector_inference_bench_runs_and_prints_its_keys() -> None:
    if not (SHARED_DATA / "labels.csv").exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    values = bench_keys(
        "detector_inference.py", "--no-lab", "--shared", str(SHARED_DATA), timeout=600
    )
    for key in ("us_per_flow_1024", "sklearn_ratio_1024", "sklearn_ratio_1"):
        assert float(values[key]) > 0, values


@pytest.mark.slow
def test_analyze_bench_runs_and_prints_its_keys() -> None:
    if not (SHARED_DATA / "labels.csv").exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    values = bench_keys("analyze.py", timeout=600)
    assert float(values["analyze_pps"]) > 0 and float(values["flows_only_pps"]) > 0, values
    assert int(values["packets"]) > 0 and int(values["flows"]) > 0, values


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.bpf
def test_firewall_bench_runs_and_prints_its_keys() -> None:
    require_root_and("ip", "nft", "nsenter", "ethtool")
    values = bench_keys("firewall_block.py", timeout=600)
    for key in (
        "verdict_to_drop_p50_ms",
        "verdict_to_drop_p99_ms",
        "blocks_per_s",
        "baseline_blocks_per_s",
        "nft_verdict_to_drop_p50_ms",
    ):
        assert float(values[key]) > 0, values


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.bpf
@pytest.mark.etcd
def test_soak_bench_runs_and_prints_its_keys() -> None:
    """90 s of the soak (its figures need minutes; this only shows the script works)."""
    require_root_and("ip", "nsenter", "nmap", "etcd")
    # A prefix of its own: a developer's soak (mldb-soak) may be running.
    values = bench_keys("soak.py", "--prefix", "mldt-soak", timeout=900)
    for service in ("sniffer", "detector", "firewall", "rag", "etcd"):
        float(values[f"rss_growth_mb_per_h_{service}"])
        assert float(values[f"rss_mb_end_{service}"]) > 10, values
    assert int(values["flows"]) > 0 and int(values["samples"]) >= 5, values
    assert values["restarts_detector"] == "0", values
    float(values["rss_growth_mb_per_h_max"])
