"""The lab for real: namespaces, services, every recipe's traffic arriving, a scenario capture.

One lab is built for the module from a copy of the default topology with its own prefix
(``mldt-lab``), so a developer's running lab (``mld-lab``) is left alone. The machine is
compared before ``up`` and after ``down``: namespaces, root-namespace links, XDP programs
loaded, bpffs pins. Recipes run with smaller parameters than their defaults (the same
tools, fewer packets) to keep the suite short; their evidence scales with the parameters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from detector.labels import read_labels
from lab.lifecycle import down, status, up
from lab.netns import list_namespaces
from lab.recipes import load_recipes, run_recipe
from lab.topology import Topology, load_topology
from tests.support import REPO, lab_topology, require_root_and, sh, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TOOLS = ("ip", "ethtool", "tcpdump", "nginx", "dnsmasq", "iodined", "socat", "nmap", "hping3",
         "masscan", "hydra", "iodine", "slowhttptest", "sshpass", "bpftool", "nstat")  # fmt: skip

# Smaller runs of the same tools (the defaults are sized for datasets).
QUICK: dict[str, dict[str, Any]] = {
    "http_browse": {"pages": 6, "pause_ms": 20},
    "http_browse_v6": {"pages": 8},
    "dns_lookups": {"queries": 20},
    "ssh_login": {"logins": 3},
    "bulk_download": {"rate_mb": 40},
    "bulk_upload": {"mb": 2},
    "keepalive": {"hold_s": 3},
    "ping": {"count": 5},
    "port_scan_syn": {"last_port": 500},
    "port_scan_connect": {"last_port": 300},
    "port_scan_udp": {"ports": 20},
    "masscan_scan": {"last_port": 600, "rate": 3000},
    "syn_flood": {"count": 2000},
    "syn_flood_spoofed": {"count": 2000},
    "udp_flood": {"count": 2000},
    "icmp_flood": {"count": 2000},
    "dns_amplification": {"count": 500},
    "slow_http": {"connections": 60, "seconds": 6},
    "ssh_bruteforce": {"guesses": 10, "tasks": 4},
    "http_bruteforce": {"guesses": 40},
    "dns_tunnel": {"files": 2},
    "dns_exfil": {"kib": 2, "pause_ms": 0},
    "c2_beacon": {"beacons": 4, "period_s": 1},
}


def machine_snapshot() -> dict[str, Any]:
    """What the lab must leave as it found: namespaces, root links, XDP programs, pins."""
    links = json.loads(sh("ip", "-j", "link", "show").stdout)
    progs = json.loads(sh("bpftool", "-j", "prog", "show").stdout or "[]")
    pins = (
        sorted(str(p) for p in Path("/sys/fs/bpf").rglob("*"))
        if Path("/sys/fs/bpf").is_dir()
        else []
    )
    return {
        "namespaces": sorted(sh("ip", "netns", "list").stdout.split("\n")),
        "links": sorted((link["ifname"], bool(link.get("xdp"))) for link in links),
        "xdp_programs": sorted(p["id"] for p in progs if p.get("type") == "xdp"),
        "pins": pins,
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Path]]:
    require_root_and(*TOOLS)
    tmp = tmp_path_factory.mktemp("lab")
    topo = lab_topology(tmp, "mldt-lab")
    run_dir = tmp / "run"
    before = machine_snapshot()
    try:
        up(topo, run_dir)
        yield topo, run_dir
    finally:
        down(topo, run_dir)
    after = machine_snapshot()
    assert after == before, "the lab left something behind"


def test_up_builds_every_host_and_service(lab: tuple[Topology, Path]) -> None:
    topo, run_dir = lab
    st = status(topo, run_dir)
    assert st["up"], st
    assert set(st["namespaces"]) == set(topo.namespaces())
    assert {s["service"] for s in st["services"]} == {
        "http",
        "ssh",
        "dns",
        "tunnel_dns",
        "smb",
        "ftp",
    }
    # The gateway forwards: the client reaches the server's services through it, and the
    # server's replies come back the same way (TTL 64 - 1 hop).
    client = topo.namespace("client")
    out = sh("ip", "netns", "exec", client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "http://10.10.0.10/index.html").stdout  # fmt: skip
    assert out == "200"
    ping = sh("ip", "netns", "exec", client, "ping", "-c1", "-W2", "10.10.0.10").stdout
    assert "ttl=63" in ping
    route = sh("ip", "netns", "exec", client, "ip", "route", "get", "10.10.0.10").stdout
    assert "via 203.0.113.1" in route


@pytest.mark.parametrize("name", sorted(load_recipes(load_topology())))
def test_recipe_traffic_arrives(lab: tuple[Topology, Path], name: str) -> None:
    topo, run_dir = lab
    recipe = load_recipes(topo)[name]
    recipe = replace(recipe, params={**recipe.params, **QUICK.get(name, {})})
    truth = run_recipe(recipe, topo, run_dir, seed=11)
    assert not truth.timed_out, f"{name} hit its {recipe.timeout_s:g} s bound"
    assert truth.evidence, f"{name} has no evidence to check"
    for ev in truth.evidence:
        assert ev["ok"], f"{name}: {ev['check']}, saw {ev['seen']}"
    assert truth.end > truth.start
    if recipe.is_attack:
        assert truth.family == recipe.family and truth.target_hosts and truth.attack_hosts


def test_scenario_capture_and_labels_from_one_command(
    lab: tuple[Topology, Path], tmp_path: Path
) -> None:
    """`mld lab capture` runs the smoke scenario (45 s): a pcap on the gateway, labels for
    its two attacks, and the labelled flows counted by the native engine match the tools'
    own packet counts."""
    topo, run_dir = lab
    out = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, "-m", "mld.cli", "lab", "capture", "--scenario", "smoke", "--seed", "3",
         "--out", str(out), "--topology", str(topo.source), "--run-dir", str(run_dir), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["capture"]["captured"] > 1000
    assert summary["capture"]["dropped_by_kernel"] == 0
    assert summary["evidence_failed"] == [] and summary["errors"] == []
    rows = read_labels(out / "labels.csv")
    assert [r.label for r in rows] == ["port_scan", "syn_flood"]
    truths = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    attacks = {t["label"]: t for t in truths if t["kind"] == "attack"}
    assert sum(1 for t in truths if t["kind"] == "benign") >= 3
    labels = summary["flows"]["labels"]
    # One flow per probed port and one per flood SYN (hping3 moves the source port each
    # packet); benign flows were captured too.
    assert labels["port_scan"] == attacks["port_scan"]["params"]["last_port"]
    assert labels["syn_flood"] == attacks["syn_flood"]["params"]["count"]
    assert labels["benign"] > 20


def test_down_stops_a_sniffer_and_removes_its_xdp(tmp_path: Path) -> None:
    """A process the lab did not start itself (a sniffer with XDP on the gateway's NICs) is
    stopped by ``down`` through the namespace, and its XDP programs go with it."""
    require_root_and(*TOOLS)
    topo = lab_topology(tmp_path, "mldx-lab")
    run_dir = tmp_path / "run"
    before = machine_snapshot()
    sniffer = None
    try:
        up(topo, run_dir)
        gw = topo.namespace("gateway")
        sniffer = subprocess.Popen(
            ["ip", "netns", "exec", gw, sys.executable, "-m", "mld.cli", "sniffer", "run",
             "--iface", "outside", "--iface", "inside", "--no-publish"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: len(status(topo, run_dir)["hosts"]["gateway"]["xdp"]) == 2, 60,
                 "XDP on both gateway NICs")  # fmt: skip
        result = down(topo, run_dir)
        assert sniffer.pid in result["processes_stopped"]
        wait_for(lambda: sniffer is not None and sniffer.poll() is not None, 10, "sniffer exit")
    finally:
        if sniffer and sniffer.poll() is None:
            sniffer.kill()
        if sniffer:
            sniffer.wait()
        down(topo, run_dir)
    assert machine_snapshot() == before


def test_down_cleans_up_after_a_crashed_up_and_up_cleans_leftovers(tmp_path: Path) -> None:
    require_root_and(*TOOLS)
    topo = lab_topology(tmp_path, "mldc-lab")
    run_dir = tmp_path / "run"
    before = machine_snapshot()
    cmd = [sys.executable, "-m", "mld.cli", "lab", "--topology", str(topo.source), "--run-dir",
           str(run_dir)]  # fmt: skip
    proc = subprocess.Popen([*cmd[:3], "lab", "up", *cmd[4:]], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # Kill it hard once services have started: namespaces and daemons are left behind.
        def services_started() -> bool:
            state = run_dir / "state.json"
            return (
                bool(list_namespaces("mldc-lab"))
                and (run_dir / "logs" / "http.out").exists()
                and state.exists()
            )

        wait_for(services_started, 60, "the lab half up")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert list_namespaces("mldc-lab"), "nothing left behind to clean: the test proves nothing"
        # up over the leftovers works, and down afterwards removes everything.
        again = subprocess.run([*cmd[:3], "lab", "up", *cmd[4:]], cwd=REPO, capture_output=True,
                               text=True, timeout=120, check=False)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "removing leftovers" in again.stderr
        # Crash the lab again (the daemons keep running), then down from a new process.
        gone = subprocess.run([*cmd[:3], "lab", "down", *cmd[4:]], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert gone.returncode == 0, gone.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        down(topo, run_dir)
    assert not list_namespaces("mldc-lab")
    assert machine_snapshot() == before
