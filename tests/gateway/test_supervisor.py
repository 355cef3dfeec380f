"""The supervisor with real child processes (small shell scripts), and the stack's derived
config (no service started)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from base.errors import GatewayError
from config import load_config
from gateway.stack import GatewayStack, StackOptions, deep_merge
from gateway.supervisor import ChildSpec, Supervisor, read_state
from tests.support import REPO, require_etcd, wait_for


def _sh(name: str, script: str, grace_s: float = 5.0) -> ChildSpec:
    return ChildSpec(name, ("sh", "-c", script), grace_s=grace_s)


def test_children_run_log_and_a_killed_one_is_restarted(tmp_path: Path) -> None:
    events: list[str] = []
    sup = Supervisor(
        [_sh("a", "echo hello from a; exec sleep 60"), _sh("b", "exec sleep 60")],
        tmp_path / "logs",
        tmp_path / "state.json",
        on_event=events.append,
    )
    sup.start_all()
    try:
        first = sup.pid("a")
        assert first is not None and sup.pid("b") is not None
        state = read_state(tmp_path / "state.json")
        assert state is not None and state["children"]["a"]["pid"] == first
        log_path = tmp_path / "logs" / "a.log"
        # Kill it only once it has written: killed before its echo, it never would (CI saw that).
        wait_for(lambda: "hello from a" in log_path.read_text().splitlines(), 10, "a's output")
        os.kill(first, signal.SIGKILL)
        # Reaped at the next poll, started again after the first backoff (1 s).
        wait_for(lambda: sup.poll() or sup.pid("a") not in (None, first), 10, "a restarted")
        assert sup.restarts("a") == 1 and sup.restarts("b") == 0
        assert any("exited with SIGKILL" in e for e in events), events
        assert read_state(tmp_path / "state.json")["children"]["a"]["pid"] == sup.pid("a")  # type: ignore[index]
        wait_for(lambda: log_path.read_text().splitlines().count("hello from a") == 2, 10,
                 "the restarted child's output in the same log")  # fmt: skip
        log = log_path.read_text()
        assert log.count("supervisor: starting") == 2
    finally:
        result = sup.stop()
    assert result == {"b": -signal.SIGTERM, "a": -signal.SIGTERM}
    assert read_state(tmp_path / "state.json")["children"]["a"]["pid"] is None  # type: ignore[index]


def test_the_backoff_doubles_and_a_crash_loop_stops_the_supervisor(tmp_path: Path) -> None:
    sup = Supervisor([_sh("crashy", "echo cannot start >&2; exit 3")], tmp_path / "logs",
                     crash_limit=2, crash_window_s=60)  # fmt: skip
    sup.start_all()
    starts = [time.monotonic()]
    try:
        with pytest.raises(GatewayError, match=r"(?s)crashy exited 3 times.*cannot start"):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if sup.poll():
                    starts.append(time.monotonic())
                time.sleep(0.05)
    finally:
        sup.stop()
    # Two restarts: after ~1 s, then after ~2 s.
    assert len(starts) == 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.9 < gaps[0] < 1.6 and 1.9 < gaps[1] < 2.8, gaps


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    script = "trap '' TERM; echo trap set; while :; do sleep 0.1; done"
    sup = Supervisor([_sh("stubborn", script, grace_s=1)], tmp_path / "logs")
    sup.start_all()
    # A fixed sleep is not enough on a loaded machine: wait until the shell says so.
    log_path = tmp_path / "logs" / "stubborn.log"
    wait_for(lambda: "trap set" in log_path.read_text().splitlines(), 10, "the shell's trap")
    started = time.monotonic()
    result = sup.stop()
    assert result == {"stubborn": -signal.SIGKILL}
    assert time.monotonic() - started < 5


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3], "e": {"f": 1}}, "g": 2})
    assert merged == {"a": {"b": 1, "c": [3], "e": {"f": 1}}, "d": 1, "g": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_the_stack_derives_one_checked_config_for_every_service(tmp_path: Path) -> None:
    require_etcd()
    user = tmp_path / "mld.yaml"
    user.write_text(yaml.safe_dump({
        "node": {"id": "gw-1", "state_dir": str(tmp_path / "state"),
                 "xdp_pin_dir": "/sys/fs/bpf/mld-gw-test"},
        "transport": {"key_file": str(tmp_path / "missing.key")},
    }))  # fmt: skip
    events: list[str] = []
    stack = GatewayStack(
        StackOptions(outside="eth0", inside="eth1", config=str(user), run_dir=tmp_path / "run",
                     etcd_port=0, overrides={"firewall": {"ttl_base_s": 42}}),
        on_event=events.append,
    )  # fmt: skip
    cfg = load_config(stack.config_path)
    assert cfg == stack.cfg
    # No etcd configured: a local one, that every service is pointed at.
    assert stack.local_etcd is not None
    assert cfg.control.endpoints == (stack.local_etcd.endpoint,)
    # The configured key does not exist: one made in the run folder, and said so.
    assert Path(cfg.transport.key_file) == tmp_path / "run" / "node.key"
    assert oct(os.stat(cfg.transport.key_file).st_mode & 0o777) == "0o600"
    assert any("does not exist" in e for e in events), events
    # One blocklist for the sniffer and the firewall; alerts in the run folder.
    assert stack.pin_dir == Path("/sys/fs/bpf/mld-gw-test")
    assert cfg.detector.eve_log == str(tmp_path / "run" / "alerts.json")
    assert cfg.firewall.ttl_base_s == 42 and cfg.node.id == "gw-1"
    argv = {s: " ".join(stack.supervisor._children[s].spec.argv) for s in stack.supervisor.names}
    assert list(argv) == ["etcd", "sniffer", "firewall", "rag", "detector"]
    assert "--iface eth0 --iface eth1" in argv["sniffer"]
    assert all(f"--config {stack.config_path}" in argv[s] for s in argv if s != "etcd")


def test_overrides_decide_the_stack_settings_too(tmp_path: Path) -> None:
    """The lab's overrides empty control.endpoints: a local etcd even when the user's file
    names another one, and a key file named by an override is the one used."""
    require_etcd()
    user = tmp_path / "mld.yaml"
    other = {"endpoints": ["192.0.2.9:2379"], "ca_cert": "/etc/mld/etcd-pki/ca.pem"}
    user.write_text(yaml.safe_dump({"control": other}))
    key = tmp_path / "lab.key"
    from crypto_transport import KeyPair

    KeyPair.generate().save(key)
    stack = GatewayStack(StackOptions(
        outside="a", inside="b", config=str(user), run_dir=tmp_path / "run", etcd_port=0,
        overrides={"control": {"endpoints": []}, "transport": {"key_file": str(key)}},
    ))  # fmt: skip
    assert stack.local_etcd is not None
    assert stack.cfg.control.endpoints == (stack.local_etcd.endpoint,)
    # ... with its own credentials, not the other etcd's.
    assert stack.cfg.control.ca_cert == "" and stack.local_etcd.pki_dir is not None
    assert stack.cfg.control.credentials_dir == str(stack.local_etcd.pki_dir)
    assert stack.cfg.transport.key_file == str(key)


def test_with_anomaly_enabled_the_stack_runs_its_trainer_too(tmp_path: Path) -> None:
    require_etcd()

    def stack(rag: bool = True, **overrides: Any) -> tuple[GatewayStack, list[str]]:
        events: list[str] = []
        opts = StackOptions(outside="a", inside="b", run_dir=tmp_path / "run", etcd_port=0,
                            rag=rag, overrides=overrides)  # fmt: skip
        return GatewayStack(opts, on_event=events.append), events

    assert "anomaly" not in stack()[0].supervisor.names
    with_anomaly, events = stack(anomaly={"enabled": True})
    names = with_anomaly.supervisor.names
    assert names == ["etcd", "sniffer", "firewall", "rag", "anomaly", "detector"]
    argv = with_anomaly.supervisor._children["anomaly"].spec.argv
    assert argv[-4:] == ("anomaly", "run", "--config", str(with_anomaly.config_path))
    assert not any("anomaly" in e for e in events), events
    no_rag, events = stack(rag=False, anomaly={"enabled": True})
    assert "anomaly" in no_rag.supervisor.names and "rag" not in no_rag.supervisor.names
    assert any("without the RAG store" in e for e in events), events


def test_a_bad_override_is_refused_before_anything_starts(tmp_path: Path) -> None:
    require_etcd()
    with pytest.raises(Exception, match="ttl_base_s"):
        GatewayStack(StackOptions(outside="eth0", inside="eth1", run_dir=tmp_path,
                                  overrides={"firewall": {"ttl_base_s": "soon"}}))  # fmt: skip
    assert not (tmp_path / "mld.yaml").exists()


def test_gateway_check_names_what_to_fix() -> None:
    import subprocess

    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "mld"), "gateway", "run", "--outside", "lo", "--inside",
         "no-such-nic", "--check", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    checks = {c["what"]: c for c in json.loads(proc.stdout)}
    assert checks["interface no-such-nic"]["level"] == "error"
    assert "no such interface" in checks["interface no-such-nic"]["detail"]
    assert checks["interface lo"]["level"] == "ok"
