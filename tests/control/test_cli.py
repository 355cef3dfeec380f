"""``mld etcd up|down|status``, ``mld status`` and ``mld config set|unset|list``, run as
commands against real etcd servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control import EtcdServer, ServiceControl, free_port
from control.layout import service_key
from tests.control.support import client, mld_config
from tests.support import REPO, require_etcd, wait_for

pytestmark = pytest.mark.etcd


def mld(
    *args: str, config: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mld.cli", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _config_file(tmp: Path, endpoint: str, prefix: str, server: EtcdServer | None = None) -> Path:
    """A config for ``endpoint``: the credentials of ``server`` (the tests' etcd), or
    (None) the ones `mld etcd up` makes under node.state_dir."""
    path = tmp / "mld.yaml"
    control: dict[str, object] = {"endpoints": [endpoint], "prefix": prefix}
    control |= {"health_interval_s": 0.5}
    if server is not None:
        control["credentials_dir"] = str(server.pki_dir)
    data = {"node": {"state_dir": str(tmp / "state")}, "control": control}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("words", [["etcd"], ["etcd", "up"], ["status"], ["config", "set"]])
def test_help_has_examples(words: list[str]) -> None:
    out = mld(*words, "--help").stdout
    assert "examples:" in out and "mld " in out


def test_etcd_up_status_down(tmp_path: Path) -> None:
    require_etcd()
    port = free_port()
    config = _config_file(tmp_path, f"127.0.0.1:{port}", "/mld")
    data = tmp_path / "etcd-data"
    try:
        up = json.loads(mld("etcd", "up", "--port", str(port), "--peer-port", str(free_port()),
                            "--data-dir", str(data), "--json", config=config).stdout)  # fmt: skip
        assert up["endpoint"] == f"127.0.0.1:{port}"
        again = mld("etcd", "up", "--port", str(port), "--data-dir", str(data), config=config)
        assert "already running" in again.stdout
        status = json.loads(mld("etcd", "status", "--data-dir", str(data), "--json",
                                config=config).stdout)  # fmt: skip
        assert status["running"] and status["version"].startswith("3.")
        # The services' client reaches it: a setting written and listed.
        mld("config", "set", "firewall.ttl_base_s", "600", config=config)
        listed = json.loads(mld("config", "list", "firewall", "--json", config=config).stdout)
        assert listed == [{"component": "firewall", "setting": "firewall.ttl_base_s",
                           "value": "600"}]  # fmt: skip
    finally:
        mld("etcd", "down", "--data-dir", str(data), "--purge", config=config, check=False)
    status = json.loads(mld("etcd", "status", "--data-dir", str(data), "--json",
                            config=config).stdout)  # fmt: skip
    assert not status["running"] and not data.exists()


def test_status_lists_services_with_health_and_config_outcome(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, etcd_server.endpoint, etcd_prefix, etcd_server)
    assert "no service is registered" in mld("status", config=config).stdout
    planes = [
        ServiceControl(
            mld_config(etcd_server, etcd_prefix, tmp_path / name, health_interval_s=0.5),
            component=component,
            instance=name,
            live_keys=(f"{component}.thresholds",),
            health=lambda: ("ok", {"batches_in": 7}),
        )
        for component, name in (("detector", "det-1"), ("firewall", "fw-1"))
    ]
    try:
        for plane in planes:
            plane.start()
            plane.announce()
        mld("config", "set", "detector.thresholds.alert", "0.7", config=config)

        def listed() -> list[dict[str, object]]:
            return json.loads(mld("status", "--json", config=config).stdout)["services"]

        wait_for(lambda: len(listed()) == 2 and listed()[0]["config"] is not None, 10, "both")
        det, fw = listed()
        assert (det["component"], det["instance"], det["health"]) == ("detector", "det-1", "ok")
        assert det["counters"] == {"batches_in": 7}
        assert (
            det["config"]["state"] == "applied"
            and det["config"]["key"] == "detector.thresholds.alert"
        )
        assert fw["instance"] == "fw-1" and fw["registration"]["pid"] == os.getpid()
        text = mld("status", config=config).stdout
        assert "detector/det-1" in text and "firewall/fw-1" in text and "applied" in text
    finally:
        for plane in planes:
            plane.close()
    assert "no service is registered" in mld("status", config=config).stdout


def test_config_set_checks_the_value_and_names_the_component(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, etcd_server.endpoint, etcd_prefix, etcd_server)
    bad = mld("config", "set", "detector.thresholds.alert", "high", config=config, check=False)
    assert bad.returncode == 1 and "expected a number" in bad.stderr
    shared = mld("config", "set", "logging.level", "debug", config=config, check=False)
    assert shared.returncode == 1 and "--component" in shared.stderr
    mld("config", "set", "logging.level", "debug", "--component", "sniffer", config=config)
    listed = json.loads(mld("config", "list", "--json", config=config).stdout)
    assert listed == [{"component": "sniffer", "setting": "logging.level", "value": "debug"}]
    mld("config", "unset", "logging.level", "--component", "sniffer", config=config)
    assert json.loads(mld("config", "list", "--json", config=config).stdout) == []


def test_status_without_etcd_configured_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "mld.yaml"
    path.write_text("node: {state_dir: " + str(tmp_path) + "}\n")
    proc = mld("status", config=path, check=False)
    assert proc.returncode == 1 and "control.endpoints is empty" in proc.stderr
    dead = mld("status", "--etcd", f"127.0.0.1:{free_port()}", config=path, check=False)
    assert dead.returncode == 1 and "did not answer" in dead.stderr


def test_status_shows_what_etcd_holds_without_sending_escapes_to_the_terminal(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """The attack: whoever writes a registration or a status record (a compromised
    component, or anyone on the plaintext etcd of before) puts terminal escape sequences
    in it (retitle the window, clear the screen, hide the lines above) and malformed
    numbers; the operator's `mld status` used to print the escapes raw and crashed on a
    started_ts that is not a number. Now each control character is shown escaped."""
    config = _config_file(tmp_path, etcd_server.endpoint, etcd_prefix, etcd_server)
    esc = "\x1b]0;owned\x07\x1b[2J\x1b[1A"
    etcd = client(etcd_server)
    try:
        etcd.put(
            f"{etcd_prefix}/services/firewall/fw{esc}",
            json.dumps({"host": f"h{esc}", "pid": esc, "started_ts": "soon",
                        "endpoints": {"verdicts": {"endpoint": f"tcp://x{esc}"}}}),
        )  # fmt: skip
        etcd.put(
            f"{etcd_prefix}/status/firewall/fw{esc}/config",
            json.dumps({"key": "firewall.ttl_base_s", "state": "refused", "reason": esc}),
        )
        etcd.put(f"{etcd_prefix}/services/rag/odd", "[1, 2]")
        etcd.put(f"{etcd_prefix}/config/firewall/ttl_base_s", f"600{esc}")
    finally:
        etcd.close()
    out = mld("status", config=config).stdout + mld("config", "list", config=config).stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07" in out and "fw\\x1b" in out


def test_config_set_refuses_at_once_what_the_running_service_would_refuse(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, etcd_server.endpoint, etcd_prefix, etcd_server)
    plane = ServiceControl(
        mld_config(etcd_server, etcd_prefix, tmp_path / "fw", health_interval_s=0.5),
        component="firewall",
        instance="fw-1",
        live_keys=("firewall.ttl_base_s", "firewall.allowlist"),
    )
    try:
        plane.start()
        plane.announce()
        etcd = client(etcd_server)
        health = f"{etcd_prefix}/status/firewall/fw-1/health"
        try:
            wait_for(lambda: b"live_keys" in (etcd.get(health) or b""), 10, "its health")
        finally:
            etcd.close()
        path = mld("config", "set", "firewall.control_socket", "/etc/shadow", config=config,
                   check=False)  # fmt: skip
        assert path.returncode == 1 and "cannot be set from etcd" in path.stderr
        wide = mld("config", "set", "firewall.allowlist", "[0.0.0.0/0]", config=config,
                   check=False)  # fmt: skip
        assert wide.returncode == 1 and "wider than" in wide.stderr
        mld("config", "set", "firewall.allowlist", "[198.51.100.0/24]", config=config)
        listed = json.loads(mld("config", "list", "firewall", "--json", config=config).stdout)
        assert [row["setting"] for row in listed] == ["firewall.allowlist"]
    finally:
        plane.close()


EVIL = "\x1b]0;pwned\x07\x1b[2J\n"  # sets the window title, clears the screen, forges a line


def test_status_and_config_list_do_not_pass_terminal_controls_from_etcd(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Attack: whoever can write to etcd registers a service (and writes its health, a
    config outcome, a report and an override) whose strings carry ESC sequences and a
    newline; ``mld status`` and ``mld config list`` printed them raw, so the operator's
    terminal got a new title, a cleared screen and a forged line. Each field is now shown
    with its controls escaped."""
    config = _config_file(tmp_path, etcd_server.endpoint, etcd_prefix, etcd_server)
    etcd = client(etcd_server)
    try:
        instance = f"det{EVIL}"
        etcd.put(
            service_key(etcd_prefix, "detector", instance),
            json.dumps({"host": f"h{EVIL}", "pid": EVIL, "started_ts": 0,
                        "endpoints": {"verdicts": {"endpoint": f"tcp://x{EVIL}"}}}),
        )  # fmt: skip
        status = f"{etcd_prefix}/status/detector/{instance}"
        etcd.put(f"{status}/health", json.dumps({"state": f"ok{EVIL}", "ts": 4e9}))
        etcd.put(f"{status}/config", json.dumps({"key": EVIL, "state": EVIL, "reason": EVIL}))
        etcd.put(f"{status}/model", json.dumps({"summary": f"model{EVIL}"}))
        etcd.put(f"{etcd_prefix}/config/detector/thresholds/alert", f"0.7{EVIL}")
    finally:
        etcd.close()
    for args in (("status",), ("config", "list")):
        out = mld(*args, config=config).stdout
        assert "\x1b" not in out and "\x07" not in out, args
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\n" in out, args
    lines = mld("status", config=config).stdout.splitlines()
    assert len(lines) == 4  # header, the service, its config outcome, its report
    assert len(mld("config", "list", config=config).stdout.splitlines()) == 1
