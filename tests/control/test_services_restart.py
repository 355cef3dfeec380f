"""etcd restarted under running services: `mld detector run` and `mld firewall run` (real
processes) register again on their own, find each other again, and follow config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from base.errors import ControlPlaneError
from control import EtcdServer
from crypto_transport import KeyPair
from tests.control.support import client, read_json, spawn_mld, stop
from tests.control.test_detector_discovery import _detector_config, _start_detector
from tests.support import REPO, require_etcd, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


def _start_firewall(tmp: Path, server: EtcdServer, prefix: str) -> subprocess.Popen[bytes]:
    KeyPair.generate().save(tmp / "fw.key")
    config = tmp / "firewall.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"id": "fw-a", "state_dir": str(tmp / "fw-state")},
                "transport": {"key_file": str(tmp / "fw.key")},
                "control": {
                    "endpoints": [server.endpoint],
                    "credentials_dir": str(server.pki_dir),
                    "prefix": prefix,
                    "lease_ttl_s": 2,
                    "health_interval_s": 0.5,
                },
                "firewall": {
                    "backend": "nftables",
                    "dry_run": True,
                    "listen_endpoint": "tcp://127.0.0.1:*",
                    "listen_bind": True,
                },
            }
        )
    )
    return spawn_mld(["firewall", "run", "--config", str(config)], tmp / "firewall.log")


def test_services_register_again_after_an_etcd_restart(tmp_path: Path) -> None:
    require_etcd()
    prefix = "/mld"
    server = EtcdServer(tmp_path / "etcd").start()
    detector = firewall = None
    det_key = f"{prefix}/services/detector/det-a"
    fw_key = f"{prefix}/services/firewall/fw-a"

    def receivers() -> int:
        """How many firewall agents the detector is connected to (its health in etcd)."""
        etcd = client(server)
        try:
            health = read_json(etcd, f"{prefix}/status/detector/det-a/health") or {}
        finally:
            etcd.close()
        return int(health.get("counters", {}).get("verdicts_receivers", -1))

    def registered(*keys: str) -> bool:
        try:
            etcd = client(server)
        except ControlPlaneError:  # etcd still starting
            return False
        try:
            return all(etcd.get(k) is not None for k in keys)
        finally:
            etcd.close()

    try:
        detector = _start_detector(_detector_config(tmp_path, server, prefix), tmp_path / "d.log")
        firewall = _start_firewall(tmp_path, server, prefix)
        wait_for(lambda: registered(det_key, fw_key), 30, "both registrations")
        wait_for(lambda: receivers() == 1, 10, "the detector to find the firewall")

        server.stop(kill=True)
        time.sleep(2.5)  # longer than the leases: etcd must expire them when it is back
        started = time.monotonic()
        server.start()
        wait_for(lambda: registered(det_key, fw_key), 30, "both registrations again")
        back_after = time.monotonic() - started
        assert back_after < 30
        wait_for(lambda: receivers() == 1, 10, "the detector to still know the firewall")
        # The watch is back too: a config change reaches the detector.
        etcd = client(server)
        try:
            etcd.put(f"{prefix}/config/detector/thresholds/alert", "0.6")
            status_key = f"{prefix}/status/detector/det-a/config"
            wait_for(lambda: (read_json(etcd, status_key) or {}).get("state") == "applied", 5,
                     "the change applied after the restart")  # fmt: skip
            status = json.loads(
                subprocess.run(
                    [sys.executable, "-m", "mld.cli", "status", "--json", "--etcd",
                     server.endpoint, "--config", str(tmp_path / "detector.yaml")],
                    capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
                    env=os.environ | {"PYTHONPATH": str(REPO)},
                ).stdout
            )  # fmt: skip
            names = {(s["component"], s["instance"], s["health"]) for s in status["services"]}
            assert names == {("detector", "det-a", "ok"), ("firewall", "fw-a", "ok")}
        finally:
            etcd.close()
        assert detector.poll() is None and firewall.poll() is None, "nothing restarted them"
    finally:
        stop(detector)
        stop(firewall)
        server.stop()
