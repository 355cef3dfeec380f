"""The firewall agent end to end, in namespaces this test creates: `mld firewall run` inside
namespace b, verdicts sealed and sent by this process over the encrypted transport (an
ipc:// endpoint, which crosses namespaces), pings from namespace a.

Namespace a holds an attacker (192.0.2.1), a benign client (192.0.2.3) and an allowlisted
host (192.0.2.4); b (192.0.2.2) runs the agent with the nftables backend (no XDP program
is attached there).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from crypto_transport import KeyPair, Keyring, Sender, TransportConfig
from proto.events_pb2 import VerdictBatch
from tests.firewall.support import malicious_verdict
from tests.support import REPO, NetnsPair, require_root_and, terminate, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MLD = str(REPO / ".venv" / "bin" / "mld")
ATTACKER, BENIGN, TRUSTED = "192.0.2.1", "192.0.2.3", "192.0.2.4"


class Agent:
    """One `mld firewall run` in namespace b, and a sender of verdicts to it."""

    def __init__(
        self,
        pair: NetnsPair,
        tmp: Path,
        dry_run: bool = False,
        ttl_s: int = 15,
        backend: str = "nftables",
        xdp_pin_dir: str = "/sys/fs/bpf/mld",
    ) -> None:
        self.pair = pair
        self.tmp = tmp
        self.fw_key = KeyPair.generate()
        self.det_key = KeyPair.generate()
        self.fw_key.save(tmp / "fw.key")
        self.config = tmp / "mld.yaml"
        self.endpoint = f"ipc://{tmp}/verdicts.sock"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "node": {
                        "id": "fw-test",
                        "state_dir": str(tmp / "state"),
                        "xdp_pin_dir": xdp_pin_dir,
                    },
                    "transport": {
                        "key_file": str(tmp / "fw.key"),
                        "peers": {"detector": self.det_key.public_b64},
                    },
                    "firewall": {
                        "backend": backend,
                        "listen_endpoint": self.endpoint,
                        "listen_bind": True,
                        "allowlist": ["127.0.0.0/8", "::1/128", f"{TRUSTED}/32"],
                        # The attacker shares the agent's subnet: not allowlisted here.
                        "auto_allowlist": ["own_addresses", "gateways"],
                        "ttl_base_s": ttl_s,
                        "ttl_cap_s": max(30, ttl_s),
                        "min_extend_s": 1,
                        "dry_run": dry_run,
                        "expiry_interval_s": 0.2,
                    },
                }
            )
        )
        self.proc: subprocess.Popen[str] | None = None
        self.sender: Sender | None = None
        self.seq = 0

    def start(self) -> None:
        # nsenter, not `ip netns exec`: the latter mounts a fresh /sys, which hides the
        # host's bpffs and with it the flow program's pinned blocklist.
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.pair.ns_b}",
                MLD,
                "-v",
                "--json",
                "--config",
                str(self.config),
                "firewall",
                "run",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        control = self.tmp / "state" / "firewall" / "control.sock"
        wait_for(lambda: control.exists() or self.proc.poll() is not None, 20, "agent start")
        assert self.proc.poll() is None, self.proc.communicate()
        ring = Keyring(self.det_key, grace_s=60)
        ring.add_peer("firewall", self.fw_key.public)
        self.sender = Sender(
            pattern="push",
            endpoint=self.endpoint,
            channel="verdicts",
            sender_id="detector",
            keyring=ring,
            recipients=["firewall"],
            settings=TransportConfig(),
        )

    def verdict(self, src: str, score: float, family: str = "scan") -> None:
        assert self.sender is not None
        self.seq += 1
        v = malicious_verdict(src, score, n=self.seq, family=family, protocol=1)
        self.sender.send(VerdictBatch(detector_id="det", batch_seq=self.seq, verdicts=[v]))

    def mld(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MLD, "--config", str(self.config), "firewall", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def listed(self) -> list[str]:
        done = self.mld("list", "--json")
        assert done.returncode == 0, done.stderr
        return [b["address"] for b in json.loads(done.stdout)["blocks"]]

    def stop(self) -> tuple[str, str]:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.proc is None:
            return "", ""
        out, err = terminate(self.proc)
        self.proc = None
        return out, err


@pytest.fixture
def pair(netns_pair: NetnsPair) -> Iterator[NetnsPair]:
    require_root_and("nft", "ping")
    for addr in (BENIGN, TRUSTED):
        netns_pair.run(netns_pair.ns_a, "ip", "addr", "add", f"{addr}/24", "dev", netns_pair.dev_a)
    yield netns_pair


def pings(pair: NetnsPair, src: str) -> bool:
    done = pair.run(pair.ns_a, "ping", "-c", "1", "-W", "1", "-I", src, pair.addr_b, check=False)
    return done.returncode == 0


def nft_tables(pair: NetnsPair) -> str:
    return pair.run(pair.ns_b, "nft", "list", "tables").stdout


@pytest.fixture
def agent(pair: NetnsPair, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(pair, tmp_path)
    try:
        yield a
    finally:
        a.stop()
        pair.run(pair.ns_b, "nft", "delete", "table", "inet", "mld", check=False)


@pytest.fixture
def fallback_agent(pair: NetnsPair, tmp_path: Path) -> Iterator[Agent]:
    # backend auto with no flow program (nothing pinned in this folder): nftables.
    a = Agent(pair, tmp_path, backend="auto", xdp_pin_dir=f"/sys/fs/bpf/mldt-none-{pair.ns_b}")
    try:
        yield a
    finally:
        a.stop()
        pair.run(pair.ns_b, "nft", "delete", "table", "inet", "mld", check=False)


def test_block_drops_the_attacker_only_then_expires(pair: NetnsPair, fallback_agent: Agent) -> None:
    agent = fallback_agent
    pair.run(pair.ns_b, "nft", "add", "table", "inet", "other")  # not the agent's to touch
    assert pings(pair, ATTACKER) and pings(pair, BENIGN)
    agent.start()
    assert "table inet mld" in nft_tables(pair)
    agent.verdict(ATTACKER, 0.97)
    agent.verdict(TRUSTED, 1.0)  # allowlisted: never blocked, whatever the score
    agent.verdict(BENIGN, 0.5)  # below the block threshold
    wait_for(lambda: f"{ATTACKER}/32" in agent.listed(), 10, "the block")
    assert not pings(pair, ATTACKER)
    assert pings(pair, BENIGN) and pings(pair, TRUSTED)
    assert agent.listed() == [f"{ATTACKER}/32"]
    # TTL 15 s (the checks above must finish inside it, also on a loaded machine): the
    # block lapses and traffic resumes.
    wait_for(lambda: pings(pair, ATTACKER), 60, "the block to expire")
    wait_for(lambda: agent.listed() == [], 5, "the agent to drop the expired block")
    out, err = agent.stop()
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["policy.allowlisted"] == 1 and stats["block.applied"] == 1, stats
    assert "backend nftables (fallback): no blocklist pinned" in err
    tables = nft_tables(pair)
    assert "table inet mld" not in tables and "table inet other" in tables


def test_unblock_flush_and_restart_restores_live_blocks(pair: NetnsPair, tmp_path: Path) -> None:
    agent = Agent(pair, tmp_path, ttl_s=120)
    try:
        _restart_scenario(pair, agent)
    finally:
        agent.stop()
        pair.run(pair.ns_b, "nft", "delete", "table", "inet", "mld", check=False)


def _restart_scenario(pair: NetnsPair, agent: Agent) -> None:
    agent.start()
    agent.verdict(ATTACKER, 0.99)
    agent.verdict(BENIGN, 0.95)
    wait_for(lambda: len(agent.listed()) == 2, 10, "two blocks")
    done = agent.mld("unblock", BENIGN)
    assert done.returncode == 0, done.stderr
    assert pings(pair, BENIGN) and not pings(pair, ATTACKER)
    # Restart: the attacker's block is still within its TTL and comes back.
    agent.stop()
    assert pings(pair, ATTACKER)  # the table went with the agent
    agent.start()
    assert agent.listed() == [f"{ATTACKER}/32"]
    assert not pings(pair, ATTACKER)
    done = agent.mld("flush")
    assert done.returncode == 0, done.stderr
    assert agent.listed() == [] and pings(pair, ATTACKER)
    assert agent.mld("unblock", "not-an-address").returncode == 1


def test_dry_run_changes_nothing_in_the_kernel(pair: NetnsPair, tmp_path: Path) -> None:
    a = Agent(pair, tmp_path, dry_run=True)
    try:
        a.start()
        a.verdict(ATTACKER, 0.99)
        wait_for(lambda: f"{ATTACKER}/32" in a.listed(), 10, "the dry-run decision")
        assert pings(pair, ATTACKER)
        assert "table inet mld" not in nft_tables(pair)
        _out, err = a.stop()
        assert "dry run" in err
    finally:
        a.stop()
