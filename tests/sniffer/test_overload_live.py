"""``mld sniffer run`` under a forged-source flood: overload mode, flood records, the status
and the log.

The attack (issue 20, item 3): hping3 in namespace a sends a bounded SYN flood from random
forged sources (3,000 packets at 5,000 a second) at b, then a scan from a's real address
(200 probes to successive ports). The sniffer runs XDP on b's veth with overload starting
at 200 new flows a second. Before overload mode the forged flows each became a record (and
filled the table, which evicted without a count); here they become one flood record for
the victim, scored syn_flood by the fast rules' thresholds, the scanner's probes keep their
own records, `mld sniffer status` shows what was summarised and lost, and the log says it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import NetnsPair, require_root_and, wait_for

MLD = shutil.which("mld", path=str(Path(sys.executable).parent))

pytestmark = [pytest.mark.bpf, pytest.mark.netns]


def sent(p: NetnsPair, *args: str) -> int:
    out = p.run(p.ns_a, "hping3", "-q", *args, p.addr_b, check=False)
    m = re.search(r"(\d+) packets transmitted", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return int(m.group(1))


def test_a_flood_becomes_a_victim_record_and_the_status_counts_it(
    netns_pair: NetnsPair, tmp_path: Path
) -> None:
    require_root_and("hping3", "nsenter")
    pytest.importorskip("bcc")
    assert MLD
    p = netns_pair
    pin = Path("/sys/fs/bpf") / f"mldt-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "mld.yaml"
    cfg.write_text(
        f"node: {{id: t, state_dir: {tmp_path / 'state'}, xdp_pin_dir: {pin}}}\n"
        "sniffer:\n  capture: {overload_new_flows_per_s: 200, overload_hold_s: 5.0,"
        " flood_src_min_flows: 1000000}\n  publish: {enabled: false}\n"
    )
    out = tmp_path / "flows.jsonl"
    log = (tmp_path / "sniffer.log").open("w")
    # nsenter (network namespace only): the pin dir is in the host's bpffs.
    ns = ["nsenter", f"--net=/run/netns/{p.ns_b}"]
    proc = subprocess.Popen(
        [*ns, MLD, "sniffer", "run", "--iface", p.dev_b, "--mode", "generic", "--no-publish",
         "--json-out", str(out), "--config", str(cfg)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def status() -> dict[str, float]:
        got = subprocess.run([*ns, MLD, "sniffer", "status", "--json", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        return json.loads(got.stdout)["counters"] if got.returncode == 0 else {}

    try:
        wait_for(lambda: proc.poll() is not None or "sniffing on" in
                 (tmp_path / "sniffer.log").read_text(), 60, "the sniffer")  # fmt: skip
        assert proc.poll() is None, (tmp_path / "sniffer.log").read_text()
        flood = sent(p, "-S", "-p", "80", "--rand-source", "-i", "u200", "-c", "3000")
        scan = sent(p, "-S", "-p", "++1000", "-i", "u1000", "-c", "200")
        # The summaries are drained at the next sweep, the counters shown at the next
        # health snapshot: wait for them, not for a fixed time.
        wait_for(lambda: status().get("source.flood_summarised_flows", 0) >= flood * 0.8,
                 30, "the flood's summaries")  # fmt: skip
        shown = status()
        human = [*ns, MLD, "sniffer", "status", "--config", str(cfg)]
        text = subprocess.run(human, capture_output=True, text=True, timeout=30, check=True).stdout
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(pin, ignore_errors=True)
    logged = (tmp_path / "sniffer.log").read_text()
    assert proc.returncode in (0, 143), logged
    assert shown["source.overload_by_rate"] >= 1 and shown["source.flood_records"] >= 1, shown
    assert shown["source.overload_admitted"] >= scan - 2, shown
    assert "overload: " in text and "summarised" in text and "lost uncounted 0" in text, text
    # Once per stats interval (and at the end) the log says what was summarised or lost.
    assert "overload: summarised" in logged, logged
    final = dict(re.findall(r"(source\.\w+)=(-?\d+)", logged.split("sniffer finished:")[-1]))
    assert final["source.lost_uncounted"] == "0", final
    assert final["source.evicted"] == "0" and final["source.summary_lost"] == "0", final
    records = [json.loads(line) for line in out.read_text().splitlines()]
    victim = [r for r in records if r["src_addr"] == "0.0.0.0" and r["dst_addr"] == p.addr_b
              and r["dst_port"] == 80]  # fmt: skip
    assert victim, records[:3]
    assert sum(int(r["fwd"]["packets"]) for r in victim) >= flood * 0.8, victim
    assert any(r["fast_rule"] == "syn_flood" and r["fast_score"] == 1.0 for r in victim), victim
    scanned = {r["dst_port"] for r in records if r["src_addr"] == p.addr_a}
    assert len(scanned & set(range(1000, 1000 + scan))) >= scan - 2, len(scanned)
