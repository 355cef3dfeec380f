"""evaluate.py, suricata.py and loto.py on the shared captures: per-family false alerts,
calibration on held-out benign, the Suricata column and leave-one-tool-out."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from config import load_config
from detector.bundle import load_bundle
from detector.config import ThresholdsConfig, TrainConfig
from detector.dataset import discover
from detector.evaluate import evaluate, render_evaluation
from detector.loto import leave_one_tool_out, tool_of
from detector.scoring import Scorer
from detector.suricata import run_suricata, suricata_version
from tests.detector.conftest import TinyBundle
from tests.support import SHARED_DATA

LABELS = SHARED_DATA / "labels.csv"
NDPI = SHARED_DATA / "pcaps" / "ndpi"


def test_calibration_chooses_thresholds_on_one_half_and_reports_the_other(
    tiny_bundle: TinyBundle,
) -> None:
    cfg = load_config()
    # Thresholds far too low to start from: benign flows alert and sources are blocked, so
    # the calibration has to raise them.
    noisy = ThresholdsConfig(alert=0.02, block=0.05)
    scorer = Scorer(load_bundle(tiny_bundle.path, tiny_bundle.cache), noisy)
    ev = evaluate(LABELS, NDPI, cfg.sniffer, scorer, calibrate_budget=0.005)
    cal = [c for c in ev.captures if c.split == "calibration"]
    test = [c for c in ev.captures if c.split == "test"]
    assert cal and test and not {c.name for c in cal} & {c.name for c in test}
    assert all(c.kind == "benign" and not c.trained_on for c in cal + test)
    assert ev.calibrated is not None
    th = ev.calibrated
    th.check()  # what it proposes is a valid configuration
    # On the half it was chosen on: within the budget (each family at most its share)
    # and no benign source blocked.
    n_cal = sum(c.in_scope for c in cal)
    flagged = sum(c.counts(th)["flagged"] for c in cal)
    assert flagged <= 0.005 * n_cal
    assert sum(c.counts(th)["blocked_sources"] for c in cal) == 0
    # The configured thresholds alerted more and blocked benign sources there.
    assert sum(c.counts(noisy)["flagged"] for c in cal) > flagged
    assert sum(c.counts(noisy)["blocked_sources"] for c in cal) > 0
    # The report's benign totals count the test half only.
    totals = ev.totals(thresholds=th)
    assert totals["benign"]["flows"] == sum(c.in_scope for c in test)
    text = render_evaluation(ev)
    assert "alert_per_family" in text and "false alerts by family" in text


def test_suricata_column_flags_the_flows_it_alerts_on() -> None:
    """Real Suricata 7 with ET Open on nmap's service detection: ET's Nmap user-agent
    signatures fire on its HTTP probe, and those flows are the ones counted."""
    if suricata_version() is None:
        pytest.skip("Suricata 7 is not installed (bash bench/setup-peers.sh)")
    rules = SHARED_DATA / "rules" / "et-open"
    nmap = SHARED_DATA / "pcaps" / "attacks" / "scan" / "nmap_80_service_detection.pcap"
    vanilla = SHARED_DATA / "pcaps" / "attacks" / "scan" / "nmap_80_vanilla.pcap"
    alerts = run_suricata([nmap, vanilla], rules)
    assert alerts.version.startswith("7.")
    flagged = alerts.flagged(nmap)
    assert flagged, alerts.by_capture
    for proto, ends in flagged:
        assert proto == 6 and any(port == 80 for _addr, port in ends)
    assert not alerts.flagged(vanilla)  # 11 SYN packets: no signature matches


def test_leave_one_tool_out_trains_without_the_tool(tmp_path: Path) -> None:
    """Scan has two tools in the shared data (masscan, nmap): each is left out once and
    scored by a bundle that never saw it; tunnel has one tool and is skipped."""
    captures = discover(None, SHARED_DATA)
    tools = {tool_of(c) for c in captures if c.source == "shared-attack"}
    assert {"masscan", "nmap", "amp", "syn", "iodine"} <= tools
    # A small run: the scan captures, the tunnel and twenty benign ones.
    benign = [c for c in captures if c.source == "shared-benign"][:20]
    keep = [c for c in captures if tool_of(c) in ("masscan", "nmap", "iodine")] + benign
    cfg = load_config()
    train = dataclasses.replace(
        TrainConfig(), n_trees=4, n_trees_per_family={}, max_depth=6, max_depth_per_family={}
    )
    notes: list[str] = []
    results = leave_one_tool_out(keep, cfg.sniffer, train, ThresholdsConfig(), notes.append)
    assert [(r.family, r.tool) for r in results] == [("scan", "masscan"), ("scan", "nmap")]
    masscan = results[0]
    assert masscan.flows == 2004 and masscan.trained_captures == len(keep) - 2
    assert 0 <= masscan.detected_ml <= masscan.flows
    # The fast rules do not depend on training: masscan's closed ports fail, port_scan fires.
    assert masscan.rate > 0.9
    assert any("one tool (iodine)" in n for n in notes)


def _lab_folder(root: Path, name: str, pcap: Path, host: str, recipe: str) -> None:
    from detector.labels import LabelRow, write_labels

    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(pcap, folder / "capture.pcap")
    notes = f"recipe {recipe}, seed 1"
    row = LabelRow("capture.pcap", "scan", host, "flows_from_attacker", notes, label="port_scan")
    write_labels(folder / "labels.csv", [row])


def test_leave_one_tool_out_leaves_the_tool_out_of_the_lab_captures_too(tmp_path: Path) -> None:
    """With --lab, a lab capture holds runs of the left-out tool (the lab runs nmap and
    masscan as well): their flows leave the training set (not relabelled benign), the
    other runs stay."""
    from detector.dataset import extract
    from detector.loto import lab_tool

    scan = SHARED_DATA / "pcaps" / "attacks" / "scan"
    _lab_folder(tmp_path, "00-a", scan / "masscan_tcp_0_1000.pcap", "172.31.15.102", "masscan_scan")
    _lab_folder(tmp_path, "01-b", scan / "nmap_80_vanilla.pcap", "10.87.1.10", "port_scan_syn")
    lab = discover(tmp_path, None, lab_test=())
    assert [lab_tool(c.rows[0]) for c in lab] == ["masscan", "nmap"]
    cfg = load_config()
    full = extract(lab[0], cfg.sniffer)
    assert (full.family == "scan").sum() == 1003
    gone = extract(dataclasses.replace(lab[0], drop=lab[0].rows), cfg.sniffer)
    assert len(gone.x) == len(full.x) - 1003 and not (gone.family == "scan").any()
    assert gone.excluded == 1003

    shared = [c for c in discover(None, SHARED_DATA) if tool_of(c) in ("masscan", "nmap")]
    benign = [c for c in discover(None, SHARED_DATA) if c.source == "shared-benign"][:10]
    train = dataclasses.replace(
        TrainConfig(), n_trees=4, n_trees_per_family={}, max_depth=6, max_depth_per_family={}
    )
    notes: list[str] = []
    results = leave_one_tool_out(
        lab + shared + benign, cfg.sniffer, train, ThresholdsConfig(), notes.append
    )
    by_tool = {r.tool: r for r in results}
    assert by_tool["masscan"].lab_runs_left_out == 1 and by_tool["nmap"].lab_runs_left_out == 1
    assert any("masscan: training on" in n and "1 lab runs of it left out" in n for n in notes)
