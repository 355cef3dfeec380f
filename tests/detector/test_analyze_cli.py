"""``mld detector analyze`` and ``mld detector evaluate``, run as a user runs them
(subprocess, timeout)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from config import load_config
from detector.bundle import load_bundle
from detector.evaluate import evaluate
from detector.scoring import Scorer
from tests.detector.conftest import TinyBundle
from tests.support import REPO, SHARED_DATA

MLD = str(REPO / ".venv" / "bin" / "mld")
REQUIRED = (
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "proto",
    "first_ts",
    "last_ts",
    "packets",
    "bytes",
    "fast_score",
    "fast_rule",
    "ml_score",
    "family",
    "final_score",
    "label",
    "top_features",
)


def _env(tiny: TinyBundle, tmp_path: Path) -> dict[str, str]:
    import os

    config = tmp_path / "mld.yaml"
    config.write_text(f"detector:\n  model_cache_dir: {tiny.cache}\n")
    return {**os.environ, "MLD_CONFIG": str(config)}


def _run(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLD, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_analyze_writes_one_object_per_flow(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    pcap = SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap"
    env = _env(tiny_bundle, tmp_path)
    done = _run(["detector", "analyze", str(pcap), "--bundle", str(tiny_bundle.path)], env)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    flows = _run(["sniffer", "flows", str(pcap), "--json", "-q"], env)
    assert len(rows) == len(flows.stdout.splitlines()) > 1000
    for row in rows:
        for key in REQUIRED:
            assert key in row, key
        assert row["final_score"] == max(row["fast_score"], row["ml_score"])
        assert row["label"] in ("benign", "suspicious", "malicious")
    scanner = [r for r in rows if r["src_ip"] == "172.31.15.102" and r["label"] != "benign"]
    assert len(scanner) > 900 and all(r["family"] == "scan" for r in scanner)
    assert "flows" in done.stderr and "packets/s" in done.stderr
    assert "scan" in done.stderr  # the alerts-per-family table

    out = tmp_path / "alerts.jsonl"
    alerts = _run(
        [
            "detector",
            "analyze",
            str(pcap),
            "--bundle",
            str(tiny_bundle.path),
            "--alerts-only",
            "--out",
            str(out),
            "-q",
        ],
        env,
    )
    assert alerts.returncode == 0 and alerts.stdout == "" and alerts.stderr == ""
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written and all(r["label"] != "benign" for r in written)
    assert len(written) == sum(r["label"] != "benign" for r in rows)


def test_analyze_keeps_going_past_a_bad_file(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    bad = tmp_path / "broken.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 7)
    good = SHARED_DATA / "pcaps/attacks/scan/nmap_80_vanilla.pcap"
    done = _run(
        ["detector", "analyze", str(bad), str(good), "--bundle", str(tiny_bundle.path)],
        _env(tiny_bundle, tmp_path),
    )
    assert done.returncode == 4  # some inputs failed, the others were analysed
    assert "rejected" in done.stderr and "broken.pcap" in done.stderr
    assert len(done.stdout.splitlines()) >= 1


def test_a_refused_bundle_is_an_error_with_the_reason(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    pcap = SHARED_DATA / "pcaps/attacks/scan/nmap_80_vanilla.pcap"
    done = _run(
        ["detector", "analyze", str(pcap), "--bundle", str(tmp_path)], _env(tiny_bundle, tmp_path)
    )
    assert done.returncode == 1
    assert "not a model bundle" in done.stderr


@pytest.mark.slow
def test_analyze_runs_on_every_shared_capture(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    # 1,787 files: decoder tests, nDPI protocols, attacks. The engine rejects 7 corrupt
    # files and one unsupported link type; everything else is analysed.
    done = _run(
        [
            "detector",
            "analyze",
            str(SHARED_DATA / "pcaps"),
            "--bundle",
            str(tiny_bundle.path),
            "--out",
            str(tmp_path / "all.jsonl"),
        ],
        _env(tiny_bundle, tmp_path),
        600,
    )
    assert done.returncode == 4, done.stderr
    rejected = [line for line in done.stderr.splitlines() if line.startswith("mld: rejected")]
    assert len(rejected) == 8, rejected
    lines = (tmp_path / "all.jsonl").read_text().count("\n")
    assert lines > 40000
    assert "Traceback" not in done.stderr


def test_evaluate_leaves_training_captures_out(tiny_bundle: TinyBundle) -> None:
    cfg = load_config()
    scorer = Scorer(load_bundle(tiny_bundle.path, tiny_bundle.cache), cfg.detector.thresholds)
    labels = SHARED_DATA / "labels.csv"
    ev = evaluate(labels, SHARED_DATA / "pcaps" / "ndpi", cfg.sniffer, scorer)
    trained = {c.name for c in ev.captures if c.trained_on}
    assert "attacks/scan/masscan_tcp_0_1000.pcap" in trained
    assert "attacks/dns_tunnel/iodine_elastic.pcap" not in trained
    benign = [c for c in ev.captures if c.kind == "benign"]
    assert len(benign) > 100 and sum(c.trained_on for c in benign) == (len(benign) + 1) // 2
    held = ev.totals()
    everything = ev.totals(include_trained=True)
    assert held["scan"]["captures"] == 3 and everything["scan"]["captures"] == 4
    assert held["benign"]["flows"] < everything["benign"]["flows"]
    assert held["benign"]["excluded"] > 0  # risk-flagged nDPI flows are left out
    for t in held.values():
        assert 0 <= t["rate"] <= 1


def test_evaluate_cli_json(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    done = _run(
        [
            "detector",
            "evaluate",
            str(SHARED_DATA / "labels.csv"),
            "--no-benign",
            "--json",
            "--bundle",
            str(tiny_bundle.path),
        ],
        _env(tiny_bundle, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["totals"]) == {"scan", "ddos", "tunnel"}
    assert len(result["captures"]) == 11
    text = _run(
        [
            "detector",
            "evaluate",
            str(SHARED_DATA / "labels.csv"),
            "--no-benign",
            "--bundle",
            str(tiny_bundle.path),
        ],
        _env(tiny_bundle, tmp_path),
    )
    assert "detection rate" in text.stdout and "(trained on)" in text.stdout


@pytest.mark.parametrize("action", ["analyze", "train", "evaluate"])
def test_help_has_examples(action: str) -> None:
    done = subprocess.run(
        [MLD, "detector", action, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "examples:" in done.stdout
