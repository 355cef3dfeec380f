"""Attacks on a service through the settings it takes from etcd (issue 19, finding 2).

Whoever can write ``/mld/config/<component>/...`` (any local user, on the unauthenticated
etcd of before; a compromised node or operator account now) used to be able to set any
setting of mld.yaml: the ones a service applies while running, and every other one as
"restart_required", saved in the last good file and used at the next start. Each test
here writes the attacker's value into a real etcd and checks that the real component's
control session (its own live keys and checks, as mld/runner.py builds it) refuses it
with a reason in the status key, keeps its value, and does not save it for the next
start either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from control import EtcdServer, ServiceControl
from firewall.policy import LIVE_SETTINGS
from tests.control.support import client, mld_config, read_json
from tests.support import wait_for

pytestmark = pytest.mark.etcd

# What each service passes as live_keys and validate (firewall/cli.py, detector/cli.py,
# sniffer/cli.py).
LIVE: dict[str, tuple[str, ...]] = {
    "firewall": tuple(f"firewall.{name}" for name in LIVE_SETTINGS),
    "detector": ("detector.thresholds", "detector.top_features"),
    "sniffer": ("sniffer.rules",),
}


def _validate(component: str) -> Any:
    def check(cfg: Any) -> None:
        if component == "firewall":
            cfg.firewall.check()
        elif component == "detector":
            cfg.detector.thresholds.check()

    return check


def _plane(server: EtcdServer, prefix: str, tmp: Path, component: str) -> ServiceControl:
    return ServiceControl(
        mld_config(server, prefix, tmp),
        component=component,
        instance=f"{component}-1",
        live_keys=LIVE[component],
        validate=_validate(component),
    )


def _outcome(etcd: Any, prefix: str, component: str, dotted: str) -> dict[str, Any]:
    key = f"{prefix}/status/{component}/{component}-1/config"
    record: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal record
        record = read_json(etcd, key) or {}
        return bool(record.get("key") == dotted)

    wait_for(settled, 5, f"the outcome of {dotted}")
    return record


ATTACKS = [
    # Lifts every block: every source is allowlisted.
    ("firewall", "firewall.allowlist", "[0.0.0.0/0, '::/0']", "wider than"),
    # Nearly as bad, without the literal /0.
    ("firewall", "firewall.allowlist", "['0.0.0.0/1', '128.0.0.0/1']", "wider than"),
    # Root unlinks a stale control socket at the next start: /etc/shadow is removed.
    ("firewall", "firewall.control_socket", "/etc/shadow", "cannot be set from etcd"),
    # A library planted there is loaded as root by the next detector.
    ("detector", "detector.model_cache_dir", "/tmp/planted-models", "cannot be set from etcd"),
    # The alert log appended to root's shell start-up file.
    ("detector", "detector.eve_log", "/root/.bashrc", "cannot be set from etcd"),
    # A quote in the pin folder reaches the BPF compiler's flags.
    ("sniffer", "node.xdp_pin_dir", '/sys/fs/bpf/x" -DEVIL="1', "cannot be set from etcd"),
    # Another node's key file, another peer's key, another etcd: never from etcd.
    ("detector", "transport.key_file", "/tmp/attacker.key", "cannot be set from etcd"),
    ("detector", "transport.peers", "{fw-1: AAAA}", "cannot be set from etcd"),
    # The transport's roles and authentication (issue 19, finding 5) are the file's only:
    # a sensor's key allowed to send verdicts, a sensor made a detector, CURVE turned off,
    # a frame limit that lets a peer fill the receiver's memory.
    ("firewall", "transport.channel_senders", "{verdicts: [sniffer]}", "cannot be set from etcd"),
    ("firewall", "transport.peer_roles", "{sensor-1: [detector]}", "cannot be set from etcd"),
    ("detector", "transport.curve", "false", "cannot be set from etcd"),
    ("detector", "transport.max_frame_bytes", "1073741824", "cannot be set from etcd"),
]


@pytest.mark.parametrize(("component", "dotted", "value", "reason"), ATTACKS)
def test_an_override_outside_the_live_settings_is_refused(
    etcd_server: EtcdServer,
    etcd_prefix: str,
    tmp_path: Path,
    component: str,
    dotted: str,
    value: str,
    reason: str,
) -> None:
    plane = _plane(etcd_server, etcd_prefix, tmp_path, component)
    etcd = client(etcd_server)
    try:
        before = plane.start()
        section, _, rest = dotted.partition(".")
        path = rest if section == component else dotted
        etcd.put(f"{etcd_prefix}/config/{component}/{path.replace('.', '/')}", value)
        outcome = _outcome(etcd, etcd_prefix, component, dotted)
        assert outcome["state"] == "refused", outcome
        assert reason in outcome["reason"], outcome["reason"]
        assert plane.state is not None and plane.state.config == before
        saved = tmp_path / "control" / f"{component}-{component}-1.json"
        assert dotted not in json.loads(saved.read_text())["overrides"]
        assert plane.session is not None and plane.session.counters["config_refused"] == 1
    finally:
        plane.close()
        etcd.close()


def test_a_narrow_allowlist_addition_is_applied_live(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """The bound does not stop what the allowlist is for: a partner's /24 (and the
    file's own entries, whatever their width) applies at once."""
    plane = _plane(etcd_server, etcd_prefix, tmp_path, "firewall")
    etcd = client(etcd_server)
    try:
        file_list = list(plane.start().firewall.allowlist)
        wanted = [*file_list, "198.51.100.0/24", "2001:db8:1::/48"]
        etcd.put(f"{etcd_prefix}/config/firewall/allowlist", json.dumps(wanted))
        outcome = _outcome(etcd, etcd_prefix, "firewall", "firewall.allowlist")
        assert outcome["state"] == "applied", outcome

        # The session writes the outcome before its watch thread swaps in the new
        # state (control/session.py _consider), so the state may lag the status key.
        def live() -> bool:
            state = plane.state
            return state is not None and list(state.config.firewall.allowlist) == wanted

        wait_for(live, 5, "the new allowlist in the running state")
    finally:
        plane.close()
        etcd.close()


def test_a_refused_setting_in_the_last_good_file_is_not_used_at_start(
    tmp_path: Path, etcd_prefix: str
) -> None:
    """A last good file written by an older version (which saved restart-only settings)
    or planted: a service that starts while etcd is unreachable skips what etcd may not
    set."""
    server = EtcdServer(tmp_path / "never-started")  # nothing listens on its port
    saved = tmp_path / "control" / "firewall-firewall-1.json"
    saved.parent.mkdir(parents=True)
    overrides = {"firewall.control_socket": "/etc/shadow", "firewall.block_threshold": "0.97"}
    saved.write_text(json.dumps({"saved_ts": 1.0, "overrides": overrides}))
    cfg = mld_config(server, etcd_prefix, tmp_path, timeout_s=0.3)
    plane = ServiceControl(
        cfg, component="firewall", instance="firewall-1", live_keys=LIVE["firewall"]
    )
    try:
        started = plane.start()
        assert started.firewall.control_socket == cfg.firewall.control_socket
        assert started.firewall.block_threshold == 0.97
    finally:
        plane.close()
