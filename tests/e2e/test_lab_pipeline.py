"""The whole product in the lab, end to end: ``mld lab dev`` as a user runs it.

A SYN flood or SYN scan is detected and alerted but not blocked: its flows never complete
a handshake, so its source could be forged (firewall.block_unverified); the scans that
must end in a block are connect scans (nmap -sT), whose handshakes verify the source.

Each test builds its own lab (prefix ``mldt-e2e``, so a developer's ``mld-lab`` is left
alone) and runs ``mld lab dev`` as a child process: a real etcd, the sniffer with XDP on
both NICs of the gateway namespace, the detector with the shipped compiled forests, the
firewall agent blocking at XDP, the RAG store. Traffic comes from real tools (hping3,
nmap, curl, dig, ping) inside the lab's namespaces and crosses the gateway.

The assertions read what the product wrote, independently of its own summary where they
can: the alert log (EVE JSON), the firewall's SQLite decision log, the pinned XDP
blocklist's per-prefix drop counters, the lab's ground truth (truth.jsonl), ``mld status``
through etcd, and the kernel's list of XDP programs. Cleanup (the dev process, the lab's
namespaces, the blocklist pin folder) runs even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from lab.lifecycle import down
from lab.netns import list_namespaces, xdp_attachments
from lab.topology import Topology
from tests.support import REPO, lab_topology, require_etcd, require_root_and, terminate, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.bpf, pytest.mark.etcd, pytest.mark.slow]

MLD = str(REPO / ".venv" / "bin" / "mld")
PREFIX = "mldt-e2e"
ATTACKER, CLIENT, SERVER = "203.0.113.66", "203.0.113.10", "10.10.0.10"
TOOLS = ("ip", "ethtool", "nsenter", "nginx", "dnsmasq", "hping3", "nmap", "curl", "dig")
# From the first packet of an attack to its block applied at the gateway's XDP: the flows
# end (RST) within milliseconds, the sniffer sends a batch every 0.2 s, the detector and the
# firewall take milliseconds; measured 0.5-1.5 s here. The bound leaves room for a loaded CI.
TIME_TO_BLOCK_BOUND_S = 5.0

SCENARIOS = """
scenarios:
  e2e:
    description: a SYN flood, then a connect scan, from the attacker; a benign client all along
    duration_s: 70
    background: [http_browse, dns_lookups, ping]
    attacks:
      - {recipe: syn_flood, at: [8, 10]}
      - {recipe: port_scan_connect, at: [40, 42]}
  steady:
    description: benign traffic only; the test sends the attacks itself
    duration_s: 900
    background: [http_browse, dns_lookups, ping]
    attacks: []
"""


class DevRun:
    """One ``mld lab dev`` child process and readers of what it writes."""

    def __init__(self, tmp: Path, topo: Topology, scenario: str, *sets: str) -> None:
        self.topo = topo
        self.run_dir = tmp / "run"
        self.dev = self.run_dir / "dev"
        self.summary_path = tmp / "summary.json"
        (tmp / "scenarios.yaml").write_text(SCENARIOS)
        argv = [MLD, "lab", "dev", "--topology", str(topo.source), "--run-dir",
                str(self.run_dir), "--scenarios", str(tmp / "scenarios.yaml"), "--scenario",
                scenario, "--view", "lines", "--summary", str(self.summary_path)]  # fmt: skip
        for item in sets:
            argv += ["--set", item]
        self.log_path = tmp / "dev.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def ns(self, host: str) -> str:
        return self.topo.namespace(host)

    def in_host(
        self, host: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *args], capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def stack_pids(self) -> dict[str, int | None]:
        try:
            state = json.loads((self.dev / "stack" / "stack.json").read_text())
        except (OSError, ValueError):
            return {}
        return {name: c["pid"] for name, c in state["children"].items()}

    def status(self) -> dict[str, dict[str, Any]]:
        """``mld status --json`` run in the gateway's namespace (where etcd listens)."""
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.ns('gateway')}", MLD, "status", "--json",
             "--config", str(self.dev / "stack" / "mld.yaml")],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return {}
        return {s["component"]: s for s in json.loads(proc.stdout)["services"]}

    def restarted(self, service: str, old_pid: int) -> bool:
        return self.stack_pids().get(service) not in (None, old_pid)

    def registered(self, service: str, pid: int | None) -> bool:
        """Is ``service`` registered in etcd by process ``pid``, with its health ok?"""
        entry = self.status().get(service, {})
        return bool(entry.get("registration", {}).get("pid") == pid and entry["health"] == "ok")

    def stored(self) -> int:
        """Events the RAG store has stored (its health counter in etcd)."""
        return int(self.status().get("rag", {}).get("counters", {}).get("stored", 0))

    def stored_more_than(self, count: int) -> bool:
        return self.stored() > count

    def decisions(self) -> list[dict[str, Any]]:
        path = self.dev / "state" / "firewall" / "decisions.sqlite"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY id")]
        except sqlite3.Error:
            return []
        finally:
            db.close()

    def blocks_of(self, addr: str, after: float = 0.0) -> list[dict[str, Any]]:
        return [d for d in self.decisions() if d["addr"] == addr and d["action"] == "block"
                and d["outcome"] == "applied" and d["ts"] >= after]  # fmt: skip

    def alerts(self) -> list[dict[str, Any]]:
        """The alert events of the EVE log (it also holds periodic ``stats`` events)."""
        path = self.dev / "alerts.json"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
        return [e for e in events if e.get("event_type") == "alert"]

    def drops(self, prefix: str) -> int:
        from xdp import Blocklist

        with Blocklist(f"/sys/fs/bpf/{self.topo.prefix}") as bl:
            return sum(e.drops for e in bl.entries() if e.prefix == prefix)

    def stop(self, timeout: float = 120) -> int:
        terminate(self.proc, timeout=timeout)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def lab_env(tmp_path: Path) -> Iterator[tuple[Path, Topology]]:
    require_root_and(*TOOLS)
    require_etcd()
    topo = lab_topology(tmp_path, PREFIX)
    runs: list[DevRun] = []
    try:
        yield tmp_path, topo
    finally:
        # Whatever happened: the dev process, then anything left of the lab and the pins.
        for ns in list_namespaces(PREFIX):
            with contextlib.suppress(Exception):
                for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                          text=True, check=False).stdout.split():  # fmt: skip
                    if int(pid) != os.getpid():
                        os.kill(int(pid), signal.SIGKILL)
        down(topo, tmp_path / "run")
        shutil.rmtree(f"/sys/fs/bpf/{PREFIX}", ignore_errors=True)
        del runs


def _assert_clean(topo: Topology) -> None:
    assert list_namespaces(PREFIX) == [], "the lab's namespaces are still there"
    assert not Path(f"/sys/fs/bpf/{topo.prefix}").exists(), "the blocklist pin folder is left"
    assert xdp_attachments() == [] or all(
        not a.startswith(("outside", "inside")) for a in xdp_attachments()
    )


def test_flood_is_alerted_not_blocked_and_connect_scan_blocked_while_the_client_is_served(
    lab_env: tuple[Path, Topology],
) -> None:
    """The SYN flood (SYN-only flows: every packet of it could carry a forged source) is
    detected and alerted but not blocked (outcome unverified, issue 19 finding 1); the
    connect scan that follows completes handshakes, which proves the attacker's address is
    its own, and is blocked at the gateway's XDP."""
    tmp, topo = lab_env
    run = DevRun(tmp, topo, "e2e")
    try:
        wait_for(lambda: run.blocks_of(ATTACKER) or run.proc.poll() is not None, 180,
                 "a block of the attacker")  # fmt: skip
        assert run.proc.poll() is None, run.output()
        block = run.blocks_of(ATTACKER)[0]
        assert block["backend"] == "xdp", block
        # While the block holds (20 s in the lab): the attacker's packets die at the gateway,
        # the benign client is still answered.
        before = run.drops(f"{ATTACKER}/32")
        ping = run.in_host("attacker", "ping", "-c", "3", "-i", "0.2", "-W", "1", SERVER)
        assert ping.returncode != 0 and " 0 received" in ping.stdout, ping.stdout
        assert run.drops(f"{ATTACKER}/32") >= before + 3
        curl = run.in_host("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", "5", f"http://{SERVER}/")  # fmt: skip
        assert curl.stdout == "200", (curl.stdout, curl.stderr)
        assert run.proc.wait(timeout=240) == 0, run.output()
    finally:
        code = run.stop()
    out = run.output()
    assert code == 0, out
    summary = json.loads(run.summary_path.read_text())
    truths = [json.loads(line) for line in (run.dev / "truth.jsonl").read_text().splitlines()]
    flood = next(t for t in truths if t["recipe"] == "syn_flood")
    scan_truth = next(t for t in truths if t["recipe"] == "port_scan_connect")
    # Detection: alerts naming the attacker for flows of the flood's time. (Which family
    # they carry is the detector's call: the SYN-only flows of hping3 often score as scan
    # as well as ddos.)
    alerts = [a for a in run.alerts() if a["src_ip"] == ATTACKER
              and flood["start"] - 1 <= _ts(a) <= flood["end"] + 5]  # fmt: skip
    assert alerts, "no alert for the flood's flows"
    # The EVE categories of the ddos and scan families (detector/eve.py).
    ddos_or_scan = {"Detection of a Denial of Service Attack", "Detection of a Network Scan"}
    assert {a["alert"]["category"] for a in alerts} <= ddos_or_scan
    # Not blocked: the flood's verdicts were skipped as unverified, none blocked before the
    # connect scan started.
    skipped = [d for d in run.decisions() if d["addr"] == ATTACKER
               and d["outcome"] == "unverified" and d["ts"] < scan_truth["start"]]  # fmt: skip
    assert skipped, "no unverified skip for the flood"
    assert "never completed a handshake" in skipped[0]["reason"], skipped[0]
    early = [d for d in run.blocks_of(ATTACKER) if d["ts"] < scan_truth["start"] - 1]
    assert not early, early
    # Time to block the connect scan, from the ground truth and the decision log.
    blocks = run.blocks_of(ATTACKER, after=scan_truth["start"] - 1)
    time_to_block = blocks[0]["ts"] - scan_truth["start"]
    assert 0 <= time_to_block < TIME_TO_BLOCK_BOUND_S, time_to_block
    # The summary says the same.
    by_recipe = {a["recipe"]: a for a in summary["attacks"]}
    assert set(by_recipe) == {"syn_flood", "port_scan_connect"}, summary["attacks"]
    assert by_recipe["syn_flood"]["blocked_after_s"] is None, by_recipe["syn_flood"]
    assert by_recipe["syn_flood"]["not_blocked_unverified"], by_recipe["syn_flood"]
    assert by_recipe["syn_flood"]["detected_after_s"] is not None, by_recipe["syn_flood"]
    scan = by_recipe["port_scan_connect"]
    assert scan["blocked_after_s"] == pytest.approx(time_to_block, abs=0.05), scan
    assert summary["dropped_by_prefix"].get(f"{ATTACKER}/32", 0) > 0
    # The benign client: never blocked, and its traffic answered.
    client = summary["benign"]["client"]
    assert client["blocks"] == 0 and not run.blocks_of(CLIENT), client
    assert client["recipe_runs"] >= 5
    assert client["runs_fully_answered"] >= 0.9 * client["recipe_runs"], client
    _assert_clean(topo)


def test_each_service_killed_during_traffic_comes_back_through_etcd(
    lab_env: tuple[Path, Topology],
) -> None:
    tmp, topo = lab_env
    # Short blocks, so the attacker can be caught again after every restart.
    run = DevRun(tmp, topo, "steady", "firewall.ttl_base_s=3")
    gateway = topo.namespace("gateway")
    try:
        wait_for(lambda: len(run.status()) == 4 or run.proc.poll() is not None, 120,
                 "four services registered in etcd")  # fmt: skip
        assert run.proc.poll() is None, run.output()
        programs = sorted(xdp_attachments(gateway))
        assert [p.split(":")[0] for p in programs] == ["inside", "outside"], programs
        for service in ("sniffer", "detector", "firewall", "rag"):
            old = run.stack_pids()[service]
            assert old is not None
            killed_at = time.time()
            os.kill(old, signal.SIGKILL)
            wait_for(partial(run.restarted, service, old), 30,
                     f"the supervisor to restart {service}")  # fmt: skip
            new = run.stack_pids()[service]
            wait_for(partial(run.registered, service, new), 60,
                     f"{service} (pid {new}) registered in etcd again")  # fmt: skip
            stored_before = run.stored()
            # Let any block from the last round expire, then scan from the attacker.
            time.sleep(4)
            # A connect scan: its handshakes verify the attacker's address, so it is
            # blocked (a SYN scan would be alerted only: its source could be forged).
            scan = run.in_host("attacker", "nmap", "-sT", "-n", "-T4", "-Pn", "-p", "1-300",
                               "--max-retries", "1", SERVER)  # fmt: skip
            assert scan.returncode == 0, scan.stderr
            wait_for(partial(run.blocks_of, ATTACKER, after=killed_at), 30,
                     f"a new block of the attacker after {service} restarted")  # fmt: skip
            assert any(a["src_ip"] == ATTACKER and _ts(a) >= killed_at - 1 for a in run.alerts())
            wait_for(partial(run.stored_more_than, stored_before), 30,
                     f"new events stored after {service} restarted")  # fmt: skip
            # One XDP program per gateway NIC, never a stale one beside a new one.
            programs = sorted(xdp_attachments(gateway))
            assert [p.split(":")[0] for p in programs] == ["inside", "outside"], programs
            assert all("," not in p for p in programs), programs
        restarts = json.loads((run.dev / "stack" / "stack.json").read_text())["children"]
        assert {n: c["restarts"] for n, c in restarts.items() if n != "etcd"} == {
            "sniffer": 1, "detector": 1, "firewall": 1, "rag": 1
        }  # fmt: skip
    finally:
        code = run.stop()
    assert code == 0, run.output()
    _assert_clean(topo)


def _ts(alert: dict[str, Any]) -> float:
    """An EVE timestamp (flow's last packet) as seconds since the epoch."""
    import datetime as dt

    return dt.datetime.strptime(alert["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
