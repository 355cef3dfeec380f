"""``mld gateway run --outside DEV --inside DEV`` on the lab's gateway namespace, as on a
dual-NIC box: the checks pass (the lab forwards), every service comes up through a local
etcd (the anomaly model's trainer among them), a SYN flood forged "from" an address that
never sends a packet is detected but that address is not blocked, a connect scan from the
attacker (handshakes completed) is blocked in transit (its packets die at the gateway's
XDP while the client's requests are still forwarded and answered), and SIGTERM stops it
all with no XDP program left on the NICs.

The attack (issue 19, finding 1): the attacker sends 8,000 SYNs with the forged source
FORGED to the server. Before the fix they scored syn_flood 1.0 and the firewall blocked
FORGED, an address that never sent anything: anyone could get any address blocked. Now
the verdict carries src_verified false (FORGED never completed a handshake) and the
firewall skips it with outcome ``unverified``; the alert still goes out."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.lifecycle import down, up
from lab.netns import xdp_attachments
from lab.topology import Topology
from tests.support import REPO, lab_topology, require_etcd, require_root_and, terminate, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.bpf, pytest.mark.etcd, pytest.mark.slow]

MLD = str(REPO / ".venv" / "bin" / "mld")
PREFIX = "mldt-gw"
ATTACKER, SERVER = "203.0.113.66", "10.10.0.10"
# A documentation address on no lab segment: it never sends a packet, the attacker forges it.
FORGED = "198.51.100.53"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Topology]:
    require_root_and("ip", "nsenter", "nginx", "nmap", "curl", "hping3")
    require_etcd()
    topo = lab_topology(tmp_path, PREFIX)
    up(topo, tmp_path / "labrun")
    try:
        yield topo
    finally:
        down(topo, tmp_path / "labrun")
        shutil.rmtree(f"/sys/fs/bpf/{PREFIX}", ignore_errors=True)


def _in(topo: Topology, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", topo.namespace(host), *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_mld_gateway_blocks_in_transit_and_stops_cleanly(lab: Topology, tmp_path: Path) -> None:
    gw_ns = f"/run/netns/{lab.namespace('gateway')}"
    config = tmp_path / "mld.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"id": "gw-test", "state_dir": str(tmp_path / "state"),
                 "xdp_pin_dir": f"/sys/fs/bpf/{PREFIX}"},
        "control": {"lease_ttl_s": 3, "health_interval_s": 1.0},
        # The attacker is on the gateway's connected outside segment, which the firewall
        # would otherwise allowlist.
        "firewall": {"auto_allowlist": ["own_addresses", "gateways", "resolvers", "ntp"]},
        # The anomaly model's trainer is a service of the stack too once enabled.
        "anomaly": {"enabled": True},
    }))  # fmt: skip
    run_dir = tmp_path / "gw"
    check = subprocess.run(["nsenter", f"--net={gw_ns}", MLD, "gateway", "run", "--outside",
                            "outside", "--inside", "inside", "--check", "--json"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    levels = {c["what"]: c["level"] for c in json.loads(check.stdout)}
    assert levels["IPv4 forwarding"] == "ok" and levels["interface outside"] == "ok", levels
    proc = subprocess.Popen(
        ["nsenter", f"--net={gw_ns}", MLD, "gateway", "run", "--outside", "outside", "--inside",
         "inside", "--config", str(config), "--run-dir", str(run_dir), "--etcd-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def status() -> dict[str, Any]:
        out = subprocess.run(["nsenter", f"--net={gw_ns}", MLD, "status", "--json", "--config",
                              str(run_dir / "mld.yaml")],
                             capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if out.returncode != 0:
            return {}
        return {s["component"]: s["health"] for s in json.loads(out.stdout)["services"]}

    def decisions(where: str) -> list[tuple[Any, ...]]:
        path = tmp_path / "state" / "firewall" / "decisions.sqlite"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(f"SELECT addr, backend FROM decisions WHERE {where}").fetchall()
        finally:
            db.close()

    def blocks() -> list[tuple[Any, ...]]:
        return decisions("action IN ('block', 'extend') AND outcome = 'applied'")

    def unverified() -> list[Any]:
        return [addr for addr, _ in decisions("outcome = 'unverified'")]

    try:
        services = ("anomaly", "detector", "firewall", "rag", "sniffer")
        wait_for(lambda: status() == dict.fromkeys(services, "ok") or proc.poll() is not None,
                 120, "the five services registered and ok")  # fmt: skip
        assert proc.poll() is None
        assert sorted(a.split(":")[0] for a in xdp_attachments(lab.namespace("gateway"))) == [
            "inside", "outside"
        ]  # fmt: skip
        # The forged flood: 8,000 SYNs "from" FORGED to the web server (10 kHz), whose
        # SYN-ACKs go to FORGED's real owner (here: nowhere), so no handshake completes.
        # Enough to score syn_flood 1.0 (over 100 SYN-only flows/s to one destination).
        flood = _in(lab, "attacker", "hping3", "-q", "-S", "-p", "80", "-a", FORGED,
                    "-i", "u100", "-c", "8000", SERVER)  # fmt: skip
        assert "8000 packets transmitted" in flood.stdout + flood.stderr, flood
        # SYN-only flows end by idle timeout (sniffer.capture.idle_timeout_s, 30 s here).
        wait_for(lambda: FORGED in unverified(), 150, "the forged flood judged, not blocked")
        # A connect scan completes handshakes on the open ports: its source is verified.
        scan = _in(lab, "attacker", "nmap", "-sT", "-n", "-T4", "-Pn", "-p", "1-400",
                   "--max-retries", "1", SERVER)  # fmt: skip
        assert scan.returncode == 0, scan.stderr
        wait_for(lambda: (ATTACKER, "xdp") in blocks(), 30, "the attacker blocked at XDP")
        assert FORGED not in [addr for addr, _ in blocks()]
        ping = _in(lab, "attacker", "ping", "-c", "3", "-i", "0.2", "-W", "1", SERVER)
        assert " 0 received" in ping.stdout, ping.stdout
        curl = _in(lab, "client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                   "--max-time", "5", f"http://{SERVER}/")  # fmt: skip
        assert curl.stdout == "200", curl
        eve = [json.loads(line) for line in (run_dir / "alerts.json").read_text().splitlines()]
        alerts = [e for e in eve if e.get("event_type") == "alert"]  # not the stats events
        assert any(a["src_ip"] == ATTACKER for a in alerts)
        assert any(a["src_ip"] == FORGED for a in alerts)  # alerted, though not blocked
    finally:
        out, _ = terminate(proc, timeout=90)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped: sniffer (exit 0), detector (exit 0)" in out, out[-3000:]
    assert "anomaly (exit 0), rag (exit 0)" in out, out[-3000:]
    assert xdp_attachments(lab.namespace("gateway")) == []
