"""ControlSession and ServiceControl against a real etcd: leases, live config, restarts."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from base.errors import ConfigError
from control import ControlSession, Endpoint, EtcdServer, ServiceControl
from control.layout import Registration
from tests.control.support import client, mld_config, read_json
from tests.support import REPO, require_etcd, wait_for

pytestmark = pytest.mark.etcd


def _check_thresholds(cfg: object) -> None:
    cfg.detector.thresholds.check()  # type: ignore[attr-defined]


def _plane(
    server: EtcdServer, prefix: str, tmp: Path, instance: str = "det-1", **kw: object
) -> ServiceControl:
    return ServiceControl(
        mld_config(server, prefix, tmp),
        component="detector",
        instance=instance,
        live_keys=("detector.thresholds",),
        validate=_check_thresholds,
        **kw,  # type: ignore[arg-type]
    )


def test_registration_lives_with_the_lease_and_close_deregisters(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    plane = _plane(etcd_server, etcd_prefix, tmp_path)
    etcd = client(etcd_server)
    try:
        plane.start()
        plane.announce({"flows": Endpoint("tcp://127.0.0.1:5571", "push", "flows")})
        key = f"{etcd_prefix}/services/detector/det-1"
        wait_for(lambda: etcd.get(key) is not None, 3, "the registration")
        reg = Registration.from_json(etcd.get(key) or b"", key=key)
        assert reg.pid == os.getpid()
        assert reg.endpoints["flows"].endpoint == "tcp://127.0.0.1:5571"
        # Renewed in the background: still there after three lease lengths.
        time.sleep(6.5)
        assert etcd.get(key) is not None
        health = read_json(etcd, f"{etcd_prefix}/status/detector/det-1/health")
        assert health["state"] == "ok" and time.time() - health["ts"] < 2
        # A component writes its own status and learned settings beside its health.
        learned = f"{etcd_prefix}/status/detector/det-1/learned"
        plane.report("learned", {"window_flows": 1000})
        wait_for(lambda: etcd.get(learned) is not None, 2, "the report")
        assert read_json(etcd, learned)["window_flows"] == 1000
        plane.close()
        assert etcd.get(key) is None, "close() revokes the lease: gone at once"
        assert etcd.get(learned) is None
    finally:
        plane.close()
        etcd.close()


def test_killed_process_disappears_within_the_lease_ttl(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    key = f"{etcd_prefix}/services/detector/victim"
    etcd = client(etcd_server)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("_registered.py")),
            etcd_server.endpoint,
            etcd_prefix,
            "victim",
            str(tmp_path),
            str(etcd_server.pki_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_for(lambda: etcd.get(key) is not None, 3, "the registration")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        killed = time.monotonic()
        # lease_ttl_s is 2; etcd checks expiry about twice a second.
        wait_for(lambda: etcd.get(key) is None, 2 + 1.5, "the registration to expire")
        gone_after = time.monotonic() - killed
        assert gone_after <= 3.5
        # The health record shared the lease.
        assert etcd.get(f"{etcd_prefix}/status/detector/victim/health") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        etcd.close()


def test_config_change_applied_live_and_invalid_one_refused_with_reason(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    plane = _plane(etcd_server, etcd_prefix, tmp_path)
    etcd = client(etcd_server)
    status_key = f"{etcd_prefix}/status/detector/det-1/config"
    try:
        assert plane.start().detector.thresholds.alert == 0.5
        base = f"{etcd_prefix}/config/detector/thresholds"
        etcd.put(f"{base}/alert", "0.6")
        seen: list[float] = []

        def changed() -> bool:
            state = plane.poll()
            if state is not None:
                seen.append(state.config.detector.thresholds.alert)
            return bool(seen) and seen[-1] == 0.6

        start = time.monotonic()
        wait_for(changed, 1.0, "the new alert threshold")
        assert time.monotonic() - start < 1.0
        wait_for(lambda: (read_json(etcd, status_key) or {}).get("state") == "applied", 2, "status")

        # Wrong type: refused, the old value stays.
        etcd.put(f"{base}/alert", "high")
        wait_for(
            lambda: (read_json(etcd, status_key) or {}).get("state") == "refused", 2, "refusal"
        )
        status = read_json(etcd, status_key)
        assert (
            "detector.thresholds.alert" in status["reason"]
            and "expected a number" in status["reason"]
        )
        # Valid type, but the component's own check fails (alert above block).
        etcd.put(f"{base}/alert", "0.95")
        wait_for(
            lambda: "is below its alert" in (read_json(etcd, status_key) or {}).get("reason", ""),
            2,
            "the component's refusal",
        )
        assert plane.state is not None and plane.state.config.detector.thresholds.alert == 0.6
        # Once block moves up, the refused alert=0.95 still in etcd becomes valid and applies.
        etcd.put(f"{base}/block", "0.97")
        wait_for(lambda: _alert_is(plane, 0.95), 2, "convergence")
        # A setting read only at start (an endpoint) is not etcd's to set: refused.
        etcd.put(f"{etcd_prefix}/config/detector/listen/endpoint", "tcp://127.0.0.1:6001")
        wait_for(
            lambda: (
                "cannot be set from etcd" in (read_json(etcd, status_key) or {}).get("reason", "")
            ),
            2,
            "the refusal of a restart-only setting",
        )
        etcd.delete(f"{etcd_prefix}/config/detector/listen/endpoint")
        # Deleting an override goes back to the file's value.
        etcd.delete(f"{base}/alert")
        etcd.delete(f"{base}/block")
        wait_for(lambda: _alert_is(plane, 0.5), 2, "the file's value")
    finally:
        plane.close()
        etcd.close()


def test_log_level_follows_etcd(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path) -> None:
    root = logging.getLogger()
    before = root.level
    plane = _plane(etcd_server, etcd_prefix, tmp_path)
    etcd = client(etcd_server)
    try:
        plane.start()
        etcd.put(f"{etcd_prefix}/config/detector/logging/level", "error")
        wait_for(lambda: plane.poll() is not None and root.level == logging.ERROR, 2, "level")
    finally:
        root.setLevel(before)
        plane.close()
        etcd.close()


def _alert_is(plane: ServiceControl, want: float) -> bool:
    state = plane.state
    return state is not None and abs(state.config.detector.thresholds.alert - want) < 1e-9


def _check_back(
    server: EtcdServer, plane: ServiceControl, key: str, config: str, alert: float
) -> None:
    """After an etcd restart: registered again, and a config change still arrives."""
    etcd = client(server)
    try:
        wait_for(lambda: etcd.get(key) is not None, 10, "re-registration")
        etcd.put(f"{config}/detector/thresholds/alert", str(alert))
        wait_for(lambda: _alert_is(plane, alert), 5, "config after the restart")
    finally:
        etcd.close()


def test_restarted_etcd_gets_every_registration_back(tmp_path: Path, etcd_prefix: str) -> None:
    """etcd restarted mid-run (same data) and then replaced by an empty one (lost data):
    the session registers again on its own both times and keeps following config."""
    require_etcd()
    server = EtcdServer(tmp_path / "etcd").start()
    plane = _plane(server, etcd_prefix, tmp_path / "state")
    key = f"{etcd_prefix}/services/detector/det-1"
    try:
        plane.start()
        plane.announce({"flows": Endpoint("tcp://127.0.0.1:5571", "push", "flows")})
        etcd = client(server)
        wait_for(lambda: etcd.get(key) is not None, 3, "the registration")
        etcd.close()
        for wipe in (False, True):
            server.stop(kill=True)
            if wipe:
                import shutil

                shutil.rmtree(server.data_dir)
            time.sleep(1.0)
            server.start()
            _check_back(server, plane, key, f"{etcd_prefix}/config", 0.6 + 0.1 * wipe)
        assert plane.session is not None
        assert plane.session.counters["disconnects"] >= 2
    finally:
        plane.close()
        server.stop()


def test_start_without_etcd_uses_last_good_config_then_connects(
    tmp_path: Path, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    require_etcd()
    server = EtcdServer(tmp_path / "etcd").start()
    state = tmp_path / "state"
    try:
        first = _plane(server, etcd_prefix, state)
        first.start()
        etcd = client(server)
        etcd.put(f"{etcd_prefix}/config/detector/thresholds/alert", "0.7")
        wait_for(lambda: _alert_is(first, 0.7), 2, "alert 0.7")
        etcd.close()
        first.close()
        server.stop()

        second = _plane(server, etcd_prefix, state)
        with caplog.at_level(logging.WARNING, logger="control.session"):
            cfg = second.start()
        try:
            assert cfg.detector.thresholds.alert == 0.7, "the last good override"
            assert "last good config" in caplog.text and "etcd unreachable" in caplog.text
            assert second.state is not None and not second.state.connected
            server.start()
            key = f"{etcd_prefix}/services/detector/det-1"
            second.announce()
            etcd = client(server)
            wait_for(lambda: etcd.get(key) is not None, 30, "registration once etcd is back")
            # Registered first, then the config and peers are read and published.
            wait_for(lambda: second.state is not None and second.state.connected, 5, "connected")
            etcd.close()
        finally:
            second.close()
    finally:
        server.stop()


def test_unreachable_etcd_without_last_good_runs_from_the_file(tmp_path: Path) -> None:
    from control import free_port

    cfg = mld_config(EtcdServer(tmp_path, client_port=free_port()), "/x", tmp_path)
    plane = ServiceControl(cfg, component="firewall", instance="fw")
    started = time.monotonic()
    try:
        assert plane.start() == cfg
        assert time.monotonic() - started < cfg.control.timeout_s + 2
    finally:
        plane.close()


def test_without_endpoints_the_plane_does_nothing(tmp_path: Path) -> None:
    from config import load_config

    cfg = load_config()
    plane = ServiceControl(cfg, component="detector", instance="d")
    assert not plane.enabled and plane.start() is cfg and plane.poll() is None
    plane.announce({"flows": Endpoint("tcp://127.0.0.1:1", "push", "flows")})
    plane.close()


def test_session_refuses_to_start_without_endpoints(tmp_path: Path) -> None:
    from base.errors import ControlPlaneError
    from config import load_config

    cfg = load_config()
    with pytest.raises(ControlPlaneError, match=r"control\.endpoints is empty"):
        ControlSession(cfg.control, component="detector", instance="d", base_config=cfg).start()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix": "mld"}, "must start with '/'"),
        ({"lease_ttl_s": 1}, "at least 2 seconds"),
        ({"endpoints": ("localhost",)}, "is not host:port"),
        ({"cert": "c.pem"}, "go together"),
    ],
)
def test_control_config_is_checked(changes: dict[str, object], message: str) -> None:
    from control import ControlConfig

    with pytest.raises(ConfigError, match=message):
        ControlConfig(**changes)  # type: ignore[arg-type]
