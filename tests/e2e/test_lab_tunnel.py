"""DNS tunnels in the lab, live: iodine with three record types, each alerted within 10 s.

The attack: the lab's workstation runs iodine through the server's resolver (dnsmasq
forwards the tunnel zone to iodined) and fetches web pages through the tunnel, a page
every few seconds, three times: NULL records with raw downstream (iodine's default), TXT
with base32, and A records with base32 (no TXT/NULL/CNAME at all). Before the DNS query
windows (sniffer/dns_windows.py) the tunnel was one UDP flow scored 0.06 by the fast
rules and about 0.3 by the forests: never alerted, in `make run-lab-dev` either.

``mld lab dev`` runs as a user runs it, in its own lab (prefix ``tn4`` and a random
suffix, so no other lab is touched): a real etcd, the sniffer with XDP on the gateway's
NICs (and libpcap reading the DNS queries there), the detector, the firewall agent, the RAG
store. The assertions read the alert log (EVE JSON) against the lab's ground truth and the
run's summary; the benign client (browsing, DNS lookups, ping) must get no alert. Cleanup
(the dev process, namespaces, pins) runs even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lab.lifecycle import down
from lab.netns import list_namespaces
from lab.topology import Topology
from tests.support import REPO, lab_topology, require_etcd, require_root_and, terminate

pytestmark = [pytest.mark.netns, pytest.mark.bpf, pytest.mark.etcd, pytest.mark.slow]

MLD = str(REPO / ".venv" / "bin" / "mld")
WORKSTATION, CLIENT = "203.0.113.20", "203.0.113.10"
TOOLS = ("ip", "nsenter", "nginx", "dnsmasq", "iodine", "iodined", "curl", "dig")
# From the tunnel's start: iodine's handshake (a second or two), the flow's first interim
# record (sniffer.capture.interim_s, 5 s after its first packet), the batch, the detector.
DETECT_BOUND_S = 10.0

SCENARIOS = """
scenarios:
  tunnels:
    description: iodine with NULL, TXT and A records from the workstation, benign users
    duration_s: 105
    background: [http_browse, dns_lookups, ping]
    attacks:
      - {recipe: dns_tunnel, at: [8, 10], params: {files: 3, pause_s: 2, hold_s: 8}}
      - {recipe: dns_tunnel_txt, at: [40, 42], params: {files: 3, pause_s: 2, hold_s: 8}}
      - {recipe: dns_tunnel_a, at: [72, 74], params: {files: 2, pause_s: 2, hold_s: 8}}
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Path, Topology]]:
    require_root_and(*TOOLS)
    require_etcd()
    prefix = f"tn4{secrets.token_hex(2)}"
    topo = lab_topology(tmp_path, prefix)
    try:
        yield tmp_path, topo
    finally:
        for ns in list_namespaces(prefix):
            with contextlib.suppress(Exception):
                for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                          text=True, check=False).stdout.split():  # fmt: skip
                    if int(pid) != os.getpid():
                        os.kill(int(pid), signal.SIGKILL)
        down(topo, tmp_path / "run")
        shutil.rmtree(f"/sys/fs/bpf/{prefix}", ignore_errors=True)


def _ts(event: dict[str, Any]) -> float:
    return datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def test_iodine_tunnels_of_three_record_types_are_alerted_within_10_s(
    lab: tuple[Path, Topology],
) -> None:
    """Each tunnel is alerted as the tunnel family by the dns_tunnel rule, from a record
    of its flow that ends within 10 s of the tunnel's start; the benign client gets none."""
    tmp, topo = lab
    (tmp / "scenarios.yaml").write_text(SCENARIOS)
    run_dir, summary_path, log_path = tmp / "run", tmp / "summary.json", tmp / "dev.log"
    argv = [MLD, "lab", "dev", "--topology", str(topo.source), "--run-dir", str(run_dir),
            "--scenarios", str(tmp / "scenarios.yaml"), "--scenario", "tunnels", "--view",
            "lines", "--summary", str(summary_path)]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=420)
        finally:
            terminate(proc, timeout=120)
    out = log_path.read_text(errors="replace")[-5000:]
    assert summary_path.exists(), out
    summary = json.loads(summary_path.read_text())
    dev = run_dir / "dev"
    truths = [json.loads(line) for line in (dev / "truth.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (dev / "alerts.json").read_text().splitlines()
              if line.endswith("}")]  # fmt: skip
    alerts = [e for e in events if e.get("event_type") == "alert"]
    tunnels = [t for t in truths if t["recipe"].startswith("dns_tunnel")]
    assert {t["recipe"] for t in tunnels} == {"dns_tunnel", "dns_tunnel_txt", "dns_tunnel_a"}
    for truth in tunnels:
        # The tool really tunnelled: its queries reached the resolver.
        assert truth["evidence"][0]["ok"], truth
        mine = [a for a in alerts if a["src_ip"] == WORKSTATION and a["dest_port"] == 53
                and truth["start"] - 1 <= _ts(a) <= truth["end"] + 5]  # fmt: skip
        assert mine, (truth["recipe"], out)
        first = min(mine, key=_ts)
        assert _ts(first) - truth["start"] <= DETECT_BOUND_S, (truth["recipe"], first)
        assert first["alert"]["metadata"]["ml_family"] == ["tunnel"], first
        assert "dns_tunnel" in first["alert"]["signature"], first
    by_recipe = {a["recipe"]: a for a in summary["attacks"]}
    for name in ("dns_tunnel", "dns_tunnel_txt", "dns_tunnel_a"):
        detected = by_recipe[name]["detected_after_s"]
        assert detected is not None and detected <= DETECT_BOUND_S, by_recipe[name]
    client = summary["benign"]["client"]
    assert client["alerts"] == 0 and client["blocks"] == 0, client
    assert not [a for a in alerts if a["src_ip"] == CLIENT]
