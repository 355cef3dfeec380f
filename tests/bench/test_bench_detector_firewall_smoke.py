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


@pytest.fixture(scope="module")
def analyze_keys() -> dict[str, str]:
    """bench/analyze.py --quick, run once for the tests below."""
    if not (SHARED_DATA / "labels.csv").exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    return bench_keys("analyze.py", timeout=900)


@pytest.mark.slow
def test_analyze_bench_runs_and_prints_its_keys(analyze_keys: dict[str, str]) -> None:
    values = analyze_keys
    assert float(values["analyze_pps"]) > 0 and float(values["flows_only_pps"]) > 0, values
    assert int(values["packets"]) > 0 and int(values["flows"]) > 0, values
    # The whole `mld detector analyze --alerts-only` process wrote the alerts it counted.
    assert float(values["mld_analyze_pps"]) > 0, values
    assert values["mld_alerts"] == values["alerts"], values
    for key in ("suricata_pps", "suricata_et_pps", "ratio_suricata_et", "suricata_et_rules"):
        assert key in values, values


@pytest.mark.slow
def test_analyze_bench_runs_suricata_with_et_open(analyze_keys: dict[str, str]) -> None:
    """The Suricata contenders, when Suricata 7 is installed (bench/setup-peers.sh)."""
    values = analyze_keys
    if values["suricata_et_pps"] == "nan" and values["suricata_pps"] == "nan":
        pytest.skip("Suricata 7 is not installed (bench/setup-peers.sh); the bench said so")
    if not (SHARED_DATA / "rules" / "et-open").is_dir():
        pytest.skip(f"needs the ET Open rules in {SHARED_DATA / 'rules' / 'et-open'}")
    assert float(values["suricata_pps"]) > 0, values
    assert float(values["suricata_et_pps"]) > 0 and float(values["ratio_suricata_et"]) > 0, values
    # The rule set loaded (19,470 rules, one of which Suricata 7 rejects).
    assert int(values["suricata_et_rules"]) > 19_000, values


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
