"""The firewall agent on the control plane: a real etcd (session fixture), a real
`mld firewall run` process (dry run: no host firewall rule is touched) bound to a free
port, and verdicts sealed and sent by this process to the endpoint it registered.

Also ``Policy.reconfigure`` alone: what a live change keeps and what it lifts.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from base.errors import ConfigError
from control import ControlConfig, EtcdClient, EtcdServer
from control.session import default_registration
from crypto_transport import KeyPair, Keyring, Sender, TransportConfig
from crypto_transport.keys import load_public_key
from firewall.cli import control_request
from firewall.config import FirewallConfig
from firewall.decision_log import DecisionLog
from firewall.policy import Policy
from proto.events_pb2 import VerdictBatch
from tests.firewall.support import malicious_verdict
from tests.support import REPO, terminate, wait_for

MLD = str(REPO / ".venv" / "bin" / "mld")
TTL_BASE_S = 120


class EtcdAgent:
    """One `mld firewall run` that joins the control plane under a test's prefix."""

    def __init__(self, tmp: Path, server: EtcdServer, prefix: str) -> None:
        self.tmp = tmp
        self.prefix = prefix
        self.agent_id = f"fw-{uuid.uuid4().hex[:8]}"
        self.detector_id = f"det-{uuid.uuid4().hex[:8]}"
        self.fw_key = KeyPair.generate()
        self.det_key = KeyPair.generate()
        self.fw_key.save(tmp / "fw.key")
        self.state = tmp / "state"
        self.config = tmp / "mld.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "node": {"id": self.agent_id, "state_dir": str(self.state)},
                    "transport": {"key_file": str(tmp / "fw.key")},
                    "control": {
                        "endpoints": [server.endpoint],
                        "credentials_dir": str(server.pki_dir),
                        "prefix": prefix,
                        # Long: a registration gone right after exit was revoked, not expired.
                        "lease_ttl_s": 60,
                        "health_interval_s": 0.3,
                    },
                    "firewall": {
                        "backend": "nftables",
                        "dry_run": True,
                        "listen_endpoint": "tcp://127.0.0.1:*",
                        "listen_bind": True,
                        "ttl_base_s": TTL_BASE_S,
                        "expiry_interval_s": 0.2,
                    },
                }
            )
        )
        self.etcd = EtcdClient.connect(
            ControlConfig(endpoints=(server.endpoint,), prefix=prefix, **server.client_settings())
        )
        # The detector's public key comes from the key directory, as in a deployment, and
        # its registration as a detector is what lets that key send verdicts.
        self.etcd.put(f"{prefix}/keys/{self.detector_id}", self.det_key.public_b64)
        self.etcd.put(
            f"{prefix}/services/detector/{self.detector_id}",
            default_registration(
                component="detector", instance=self.detector_id, public_key=self.det_key.public_b64
            ).to_json(),
        )
        self.proc: subprocess.Popen[str] | None = None
        self.sender: Sender | None = None
        self.seq = 0

    @property
    def service_key(self) -> str:
        return f"{self.prefix}/services/firewall/{self.agent_id}"

    def registration(self) -> dict[str, Any] | None:
        raw = self.etcd.get(self.service_key)
        return None if raw is None else dict(json.loads(raw))

    def status(self, what: str) -> dict[str, Any] | None:
        raw = self.etcd.get(f"{self.prefix}/status/firewall/{self.agent_id}/{what}")
        return None if raw is None else dict(json.loads(raw))

    def start(self) -> None:
        proc = subprocess.Popen(
            [MLD, "-v", "--json", "--config", str(self.config), "firewall", "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.proc = proc
        wait_for(
            lambda: self.registration() is not None or proc.poll() is not None,
            20,
            "the agent's registration",
        )
        assert proc.poll() is None, proc.communicate()
        reg = self.registration()
        assert reg is not None
        ring = Keyring(self.det_key, grace_s=60)
        ring.add_peer(self.agent_id, load_public_key(reg["public_key"], what="registration"))
        self.sender = Sender(
            pattern="push",
            endpoint=reg["endpoints"]["verdicts"]["endpoint"],
            channel=reg["endpoints"]["verdicts"]["channel"],
            sender_id=self.detector_id,
            keyring=ring,
            recipients=[self.agent_id],
            settings=TransportConfig(),
        )

    def send(self, *verdicts: tuple[str, float]) -> None:
        assert self.sender is not None
        self.seq += 1
        batch = [
            malicious_verdict(src, score, n=self.seq * 100 + i)
            for i, (src, score) in enumerate(verdicts)
        ]
        self.sender.send(
            VerdictBatch(detector_id=self.detector_id, batch_seq=self.seq, verdicts=batch)
        )

    def blocks(self) -> dict[str, dict[str, Any]]:
        """Active blocks by address, from the agent's control socket."""
        reply = control_request(self.state / "firewall" / "control.sock", {"cmd": "list"})
        return {b["address"]: b for b in reply["blocks"]}

    def send_and_wait(self, probe: str, score: float, sentinel: str) -> bool:
        """Send ``probe`` with ``score`` and ``sentinel`` (0.999) in one batch; once the
        sentinel is blocked the batch was handled: True when the probe was blocked."""
        self.send((probe, score), (sentinel, 0.999))
        wait_for(lambda: f"{sentinel}/32" in self.blocks(), 5, f"the block of {sentinel}")
        return f"{probe}/32" in self.blocks()

    def ttl_of(self, addr: str) -> int:
        block = self.blocks()[f"{addr}/32"]
        return round(float(block["expires"]) - float(block["since"]))

    def listed(self) -> list[str]:
        done = subprocess.run(
            [MLD, "--config", str(self.config), "firewall", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return [b["address"] for b in json.loads(done.stdout)["blocks"]]

    def put_config(self, name: str, value: str) -> None:
        self.etcd.put(f"{self.prefix}/config/firewall/{name}", value)

    def wait_status(self, name: str, value: str | None) -> dict[str, Any]:
        """The status record of the change of ``name`` to ``value`` (None: deleted)."""
        found: dict[str, Any] = {}

        def done() -> bool:
            status = self.status("config") or {}
            if status.get("key") == f"firewall.{name}" and status.get("value") == value:
                found.update(status)
                return True
            return False

        try:
            wait_for(done, 5, f"the status of the change {name}={value}")
        except AssertionError:
            last = self.status("config")  # before stop(): it goes with the lease
            _, err = self.stop()
            raise AssertionError(f"status {last}; the agent's log:\n{err[-3000:]}") from None
        return found

    def stop(self) -> tuple[str, str]:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        out, err = "", ""
        if self.proc is not None:
            out, err = terminate(self.proc)
            self.proc = None
        return out, err

    def close(self) -> None:
        self.stop()
        self.etcd.close()


@pytest.fixture
def agent(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[EtcdAgent]:
    a = EtcdAgent(tmp_path, etcd_server, etcd_prefix)
    try:
        a.start()
        yield a
    finally:
        a.close()


@pytest.mark.etcd
def test_registers_its_endpoint_and_key_and_deregisters_on_sigterm(agent: EtcdAgent) -> None:
    reg = agent.registration()
    assert reg is not None
    offer = reg["endpoints"]["verdicts"]
    assert offer["pattern"] == "push" and offer["channel"] == "verdicts"
    host, _, port = offer["endpoint"].removeprefix("tcp://").rpartition(":")
    assert host == "127.0.0.1" and port.isdigit() and int(port) > 0
    assert reg["public_key"] == agent.fw_key.public_b64
    assert reg["component"] == "firewall" and reg["instance"] == agent.agent_id
    assert (
        agent.etcd.get(f"{agent.prefix}/keys/{agent.agent_id}") == agent.fw_key.public_b64.encode()
    )

    # The registered endpoint is the real one: a verdict sent there is decided on.
    assert agent.send_and_wait("198.51.100.1", 0.95, "203.0.113.1")

    def health_counts_blocks() -> bool:
        health = agent.status("health") or {}
        return health.get("state") == "ok" and health["counters"].get("active_blocks") == 2

    wait_for(health_counts_blocks, 5, "health with 2 active blocks")

    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    agent.proc.wait(timeout=20)
    # The lease lasts 60 s: gone at once means the agent revoked it.
    assert agent.registration() is None
    assert agent.status("health") is None
    out, err = agent.stop()
    assert "Traceback" not in err, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["batches"] == 1


@pytest.mark.etcd
def test_a_threshold_change_reaches_the_agent_within_a_second(agent: EtcdAgent) -> None:
    assert agent.send_and_wait("198.51.100.200", 0.95, "203.0.113.200")

    start = time.monotonic()
    agent.put_config("block_threshold", "0.99")
    # Probe with a fresh address each time until a 0.95 is no longer blocked.
    for i in range(1, 200):
        probe = f"198.51.100.{i}"
        if not agent.send_and_wait(probe, 0.95, f"203.0.113.{i}"):
            break
        assert time.monotonic() - start < 1.0, "the new threshold took more than 1 s"
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"the new threshold took {elapsed:.2f} s"

    status = agent.wait_status("block_threshold", "0.99")
    assert status["state"] == "applied" and status["changed"] == ["firewall.block_threshold"]
    listed = agent.listed()
    assert f"{probe}/32" not in listed and f"203.0.113.{i}/32" in listed
    assert "198.51.100.200/32" in listed  # blocks made before the change are kept


@pytest.mark.etcd
def test_an_allowlisted_address_is_unblocked_and_logged(agent: EtcdAgent) -> None:
    assert agent.send_and_wait("198.51.100.7", 0.95, "203.0.113.7")

    allowlist = '["127.0.0.0/8", "::1/128", "198.51.100.0/28"]'
    start = time.monotonic()
    agent.put_config("allowlist", allowlist)
    wait_for(lambda: "198.51.100.7/32" not in agent.blocks(), 1.0, "the unblock")
    assert time.monotonic() - start < 1.0
    assert agent.wait_status("allowlist", allowlist)["state"] == "applied"
    # Never blocked again while allowlisted; the other block stays.
    assert not agent.send_and_wait("198.51.100.7", 0.999, "203.0.113.8")
    assert "203.0.113.7/32" in agent.listed()

    with DecisionLog(agent.state / "firewall" / "decisions.sqlite") as log:
        history = log.history(address="198.51.100.7/32")
    assert [(e.action, e.outcome) for e in reversed(history)] == [
        ("block", "dry_run"),
        ("unblock", "dry_run"),
        ("skip", "allowlisted"),
    ]
    assert history[1].reason == "allowlisted by config change"


@pytest.mark.etcd
def test_an_invalid_change_is_refused_and_the_old_value_kept(agent: EtcdAgent) -> None:
    agent.put_config("ttl_base_s", "-5")
    status = agent.wait_status("ttl_base_s", "-5")
    assert status["state"] == "refused" and "ttl_base_s" in status["reason"]

    agent.put_config("block_threshold", "2")
    status = agent.wait_status("block_threshold", "2")
    assert status["state"] == "refused" and "block_threshold" in status["reason"]

    time.sleep(0.2)  # a change that was wrongly applied would have reached the agent
    assert agent.send_and_wait("198.51.100.9", 0.95, "203.0.113.9")  # threshold still 0.9
    assert agent.ttl_of("198.51.100.9") == TTL_BASE_S

    # The operator corrects one wrong value and deletes the other. (The status key holds
    # the outcome of the last change, and the session tries the refused values still in
    # etcd again after every accepted change: only the last step's status is certain.)
    agent.put_config("ttl_base_s", "240")
    agent.etcd.delete(f"{agent.prefix}/config/firewall/block_threshold")
    assert agent.wait_status("block_threshold", None)["state"] == "applied"
    time.sleep(0.2)
    assert agent.send_and_wait("198.51.100.10", 0.95, "203.0.113.10")
    assert agent.ttl_of("198.51.100.10") == 240


@pytest.mark.etcd
def test_a_setting_read_at_start_is_not_settable_from_etcd(agent: EtcdAgent) -> None:
    # Issue 19, finding 2: etcd sets the live settings only (control/overrides.py).
    agent.put_config("dry_run", "false")
    status = agent.wait_status("dry_run", "false")
    assert status["state"] == "refused" and "cannot be set from etcd" in status["reason"]
    assert agent.send_and_wait("198.51.100.11", 0.95, "203.0.113.11")
    out = control_request(agent.state / "firewall" / "control.sock", {"cmd": "status"})
    assert out["dry_run"] is True and out["backend"] == "none"


# ---- Policy.reconfigure alone ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_reconfigure_keeps_blocks_and_counters_and_lifts_allowlisted() -> None:
    clock = Clock()
    policy = Policy(FirewallConfig(), allowlist_extra=["192.0.2.250"], clock=clock)
    assert policy.decide(malicious_verdict("198.51.100.1", 0.95, n=1)).action == "block"
    assert policy.decide(malicious_verdict("198.51.100.2", 0.95, n=2)).action == "block"
    before = policy.counters()

    new = FirewallConfig(block_threshold=0.99, allowlist=("127.0.0.0/8", "198.51.100.2/32"))
    changed, unblocks = policy.reconfigure(new)
    assert changed == ["block_threshold", "allowlist"]
    assert [(d.network, d.reason) for d in unblocks] == [
        ("198.51.100.2/32", "allowlisted by config change")
    ]
    assert [b.network for b in policy.active()] == ["198.51.100.1/32"]
    assert policy.counters()["block"] == before["block"] == 2
    # The host's own addresses stay allowlisted; the new threshold applies.
    assert policy.allowlist.covers(ipaddress.ip_network("192.0.2.250/32"))
    assert policy.decide(malicious_verdict("198.51.100.3", 0.95, n=3)).outcome == "below_threshold"
    assert policy.reconfigure(new) == ([], [])


def test_reconfigure_ignores_restart_settings_and_checks_values() -> None:
    policy = Policy(FirewallConfig(dry_run=True))
    changed, _ = policy.reconfigure(FirewallConfig(dry_run=False, ttl_base_s=600))
    assert changed == ["ttl_base_s"] and policy.config.dry_run is True
    with pytest.raises(ConfigError, match="ttl_base_s"):
        policy.reconfigure(FirewallConfig(ttl_base_s=-5))
    assert policy.config.ttl_base_s == 600


def test_reconfigure_token_bucket_takes_the_new_burst() -> None:
    clock = Clock()
    policy = Policy(FirewallConfig(new_blocks_burst=5, max_new_blocks_per_s=1.0), clock=clock)
    policy.reconfigure(FirewallConfig(new_blocks_burst=2, max_new_blocks_per_s=1.0))
    outcomes = [
        policy.decide(malicious_verdict(f"198.51.100.{i}", 0.95, n=i)).outcome for i in range(1, 4)
    ]
    assert outcomes == ["pending", "pending", "rate_limited"]


def test_without_control_endpoints_the_agent_runs_from_the_file(tmp_path: Path) -> None:
    fw_key, det_key = KeyPair.generate(), KeyPair.generate()
    fw_key.save(tmp_path / "fw.key")
    endpoint = f"ipc://{tmp_path}/verdicts.sock"
    config = tmp_path / "mld.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"id": "fw-static", "state_dir": str(tmp_path / "state")},
                "transport": {
                    "key_file": str(tmp_path / "fw.key"),
                    "peers": {"detector": det_key.public_b64},
                },
                "firewall": {"dry_run": True, "listen_endpoint": endpoint, "listen_bind": True},
            }
        )
    )
    proc = subprocess.Popen(
        [MLD, "--json", "--config", str(config), "firewall", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    control = tmp_path / "state" / "firewall" / "control.sock"
    ring = Keyring(det_key, grace_s=60)
    ring.add_peer("fw-static", fw_key.public)
    sender = Sender(
        pattern="push",
        endpoint=endpoint,
        channel="verdicts",
        sender_id="detector",
        keyring=ring,
        recipients=["fw-static"],
        settings=TransportConfig(),
    )
    try:
        wait_for(lambda: control.exists() or proc.poll() is not None, 20, "agent start")
        assert proc.poll() is None, proc.communicate()
        batch = VerdictBatch(detector_id="detector", batch_seq=1)
        batch.verdicts.append(malicious_verdict("198.51.100.1", 0.95, n=1))
        sender.send(batch)
        wait_for(lambda: control_request(control, {"cmd": "list"})["blocks"], 5, "the block")
    finally:
        sender.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["block.dry_run"] == 1
