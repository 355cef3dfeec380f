"""Training decisions on real flows: swap, skip, and the refusals that keep the serving
model (a model trained on junk, a model folder that does not load)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomaly.train import retrain, train_on
from anomaly.versions import ModelDir
from anomaly.window import Window, read_window
from base.errors import ModelError
from detector.anomaly_model import load_model
from detector.config import AnomalyConfig
from mld.cli import main
from proto.events_pb2 import ScoredEvent
from tests.anomaly.support import benign_captures, capture_events, features_of, fill_store
from tests.support import SHARED_DATA

CFG = AnomalyConfig(window_flows=5000, min_flows=500, n_trees=30)


@pytest.fixture(scope="module")
def benign() -> list[ScoredEvent]:
    paths = benign_captures()
    return capture_events(paths, start=1.7e9, spacing=100.0)


@pytest.fixture(scope="module")
def scans() -> np.ndarray:
    """Flows of a masscan capture: real traffic, but not what this network looks like."""
    path = SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap"
    return features_of(capture_events([path], start=1.7e9))


def test_swap_skip_and_refusals(
    benign: list[ScoredEvent], scans: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, md, cache = tmp_path / "events.sqlite", ModelDir(tmp_path / "anomaly"), tmp_path / "cache"

    # Too few flows: skipped, nothing serves.
    fill_store(db, benign[:100])
    first = retrain(CFG, db, md.path, cache)
    assert first.action == "skip" and "min_flows" in first.reason and not md.current_version()

    # Enough: trained, judged on held-back flows, swapped in.
    fill_store(db, benign[100:])
    swap = retrain(CFG, db, md.path, cache)
    assert swap.action == "swap", swap.summary()
    assert md.current_version() == swap.version == swap.serving
    assert swap.holdout_rate_new is not None and swap.holdout_rate_new <= CFG.max_worse
    serving = md.load_current(cache)
    assert serving.training["fit_rows"] == swap.window["fit_rows"]

    # A model trained on junk (scan flows) but judged on this window's held-back flows:
    # it flags far more of them than the running model, so it is refused.
    window = read_window(db, window_flows=5000, window_s=1e9, holdout_fraction=0.1, seed=1)
    junk = Window(fit=scans, holdout=window.holdout, first_ts=0.0, last_ts=0.0)
    refused = train_on(junk, CFG, md, cache)
    assert refused.action == "refuse", refused.summary()
    assert "worse than allowed" in refused.reason
    assert refused.holdout_rate_new is not None and refused.holdout_rate_running is not None
    assert refused.holdout_rate_new > refused.holdout_rate_running + CFG.max_worse + 0.1
    assert md.current_version() == swap.version == refused.serving  # the old one serves

    # A model that does not compile (the library cache is not a folder): refused too.
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    broken = train_on(window, CFG, md, not_a_folder)
    assert broken.action == "refuse" and "does not build, compile or load" in broken.reason
    assert md.current_version() == swap.version

    # Every decision is in the history, and `mld anomaly status` shows it.
    assert [d["action"] for d in md.history()] == ["skip", "swap", "refuse", "refuse"]
    assert main(["anomaly", "status", "--model-dir", str(md.path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["serving"] == swap.version
    assert status["history"][-2]["reason"] == refused.reason
    assert main(["anomaly", "status", "--model-dir", str(md.path)]) == 0
    text = capsys.readouterr().out
    assert f"serving {swap.version}" in text and "refuse" in text

    # `mld anomaly train` on the same store: the same trees, nothing to swap.
    code = main(["anomaly", "train", "--db", str(db), "--model-dir", str(md.path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["action"] in ("skip", "swap")


def test_a_damaged_model_folder_does_not_load(benign: list[ScoredEvent], tmp_path: Path) -> None:
    db, md, cache = tmp_path / "events.sqlite", ModelDir(tmp_path / "anomaly"), tmp_path / "cache"
    fill_store(db, benign)
    assert retrain(CFG, db, md.path, cache).action == "swap"
    good = md.folder(md.current_version())

    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    with (damaged / "model.tl").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(damaged, cache)

    wrong = tmp_path / "wrong-probe"
    shutil.copytree(good, wrong)
    manifest = json.loads((wrong / "model.json").read_text())
    manifest["probe"]["scores"] = [s + 0.01 for s in manifest["probe"]["scores"]]
    (wrong / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="differs from the trained one"):
        load_model(wrong, cache)

    features = tmp_path / "features"
    shutil.copytree(good, features)
    manifest = json.loads((features / "model.json").read_text())
    manifest["features"] = manifest["features"][::-1]
    (features / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="feature list"):
        load_model(features, cache)


def test_two_trainers_on_one_model_folder_take_turns(
    benign: list[ScoredEvent], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``mld anomaly run`` and ``mld watch``'s retrain on one folder: the second waits
    for the first's lock, then judges against the model the first published."""
    db, md, cache = tmp_path / "events.sqlite", ModelDir(tmp_path / "anomaly"), tmp_path / "cache"
    fill_store(db, benign)
    # The other trainer is a real process holding the lock (flock is per open file).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(md.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(retrain(CFG, db, md.path, cache)))
        with caplog.at_level("INFO", logger="anomaly.versions"):
            thread.start()
            thread.join(1.5)
        assert "another trainer is training" in caplog.text
        assert thread.is_alive() and not md.history(), "trained while the lock was held"
    finally:
        holder.terminate()
        holder.communicate(timeout=10)
    thread.join(120)
    assert done and done[0].action == "swap", done
    assert len(md.history()) == 1


HOLD_LOCK = """
import fcntl, sys, time
from pathlib import Path
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
fd = open(Path(sys.argv[1]) / ".train.lock", "a+b")
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""
