"""``mld sniffer run`` live: XDP on a veth in a namespace, real packets, SIGTERM, flushed
records."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import NetnsPair
from tests.xdp import frames

MLD = shutil.which("mld", path=str(Path(sys.executable).parent))


@pytest.mark.bpf
@pytest.mark.netns
def test_sniff_flushes_live_flows_on_sigterm(netns_pair: NetnsPair, tmp_path: Path) -> None:
    assert MLD
    out = tmp_path / "flows.jsonl"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns_pair.ns_b, MLD, "sniffer", "run", "--iface", netns_pair.dev_b,
         "--mode", "generic", "--no-publish", "--json-out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        attached = False
        while time.monotonic() < deadline and proc.poll() is None:
            shown = netns_pair.run(netns_pair.ns_b, "ip", "link", "show", netns_pair.dev_b)
            if "xdp" in shown.stdout:
                attached = True
                break
            time.sleep(0.2)
        assert attached, proc.stderr.read() if proc.stderr else ""
        # Three packets the parser cannot follow (seven IPv6 extension headers), then the
        # pings: answered pings mean the XDP program has handled the frames queued before.
        a, b = (
            frames.mac(netns_pair.ns_a, netns_pair.dev_a),
            frames.mac(netns_pair.ns_b, netns_pair.dev_b),
        )
        bad = frames.icmpv6_echo_with_dest_opts("2001:db8::1", "2001:db8::2", 7, 1, 1)
        assert (
            frames.send(netns_pair, [frames.ether(b, a, 0x86DD, bad)] * 3, str(tmp_path / "f")) == 3
        )
        netns_pair.run(netns_pair.ns_a, "ping", "-c", "3", "-i", "0.2", netns_pair.addr_b)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 143), err
    # The parse errors, by reason, in the service's counters (health, /metrics, stats line):
    # dropped by default (sniffer.capture.parse_error_action).
    assert "source.parse_ext_limit=3 " in err and "source.parse_dropped=3 " in err, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    icmp = [r for r in records if r["protocol"] == 1 and r["src_addr"] == netns_pair.addr_a]
    assert icmp, records
    assert icmp[0]["dst_addr"] == netns_pair.addr_b
    # XDP sees ingress only: the echo requests arriving at dev_b, not the replies it sends.
    assert int(icmp[0]["fwd"]["packets"]) == 3
    assert icmp[0]["src_port"] == 8  # echo request
    assert icmp[0]["end_reason"] == "END_REASON_CAPTURE_END"
