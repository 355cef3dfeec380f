"""``mld anomaly run`` as a command: trains in its own process, registers as
``anomaly/<id>`` and its decisions show in ``mld status``; ``--help`` has examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control import EtcdServer
from tests.anomaly.support import capture_events, fill_store
from tests.support import REPO, SHARED_DATA, terminate, wait_for


def mld(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mld.cli", *args, *(["--config", str(config)] if config else [])]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )


def config_file(tmp: Path, **sections: object) -> Path:
    data = {
        "node": {"state_dir": str(tmp / "state"), "id": "anom-1"},
        "rag": {"db": str(tmp / "events.sqlite")},
        "anomaly": {"min_flows": 100, "n_trees": 20},
        "detector": {"model_cache_dir": str(tmp / "cache")},
        **sections,
    }
    path = tmp / "mld.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("store") / "events.sqlite"
    paths = sorted((SHARED_DATA / "pcaps/ndpi").glob("r*.pcap"))
    fill_store(db, capture_events(paths, start=1.7e9, spacing=100.0))
    return db


@pytest.mark.parametrize("words", [["anomaly"], ["anomaly", "train"], ["anomaly", "run"]])
def test_help_has_examples(words: list[str]) -> None:
    out = mld(*words, "--help").stdout
    assert "examples:" in out and "mld anomaly" in out


def test_serve_without_etcd_trains_once_and_stops(store: Path, tmp_path: Path) -> None:
    config = config_file(tmp_path)
    done = mld("anomaly", "run", "--db", str(store), "--max-rounds", "1", "--json", config=config)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["swap"] == 1 and stats["serving"] == stats["last_version"]
    status = json.loads(mld("anomaly", "status", "--json", config=config).stdout)
    assert status["serving"] == stats["serving"]
    assert Path(status["model_dir"]) == tmp_path / "state" / "anomaly"


@pytest.mark.etcd
def test_serve_reports_its_decisions_to_mld_status(
    etcd_server: EtcdServer, etcd_prefix: str, store: Path, tmp_path: Path
) -> None:
    control = {"endpoints": [etcd_server.endpoint], "prefix": etcd_prefix, "health_interval_s": 0.5}
    control["credentials_dir"] = str(etcd_server.pki_dir)
    config = config_file(tmp_path, control=control)
    cmd = [
        sys.executable,
        "-m",
        "mld.cli",
        "anomaly",
        "run",
        "--db",
        str(store),
        "--config",
        str(config),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def anomaly() -> dict[str, object]:
            out = mld("status", "--json", config=config).stdout
            found = [s for s in json.loads(out)["services"] if s["component"] == "anomaly"]
            return found[0] if found else {}

        wait_for(lambda: anomaly().get("reports", {}).get("model"), 90, "a reported decision")
        service = anomaly()
        assert service["instance"] == "anom-1" and service["reports"]["model"]["action"] == "swap"
        wait_for(lambda: anomaly().get("counters", {}).get("swap") == 1, 10, "health")
        text = mld("status", config=config).stdout
        assert "anomaly/anom-1" in text and "model: " in text and " swap " in text
    finally:
        _out, err = terminate(proc)
    assert proc.returncode == 0, err
