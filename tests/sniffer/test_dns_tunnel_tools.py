"""A DNS tunnel of another tool than the lab's iodine: dns2tcp, run for real, alerts.

The attack: dns2tcp (client dns2tcpc, server dns2tcpd, Debian's dns2tcp) carries a TCP
stream in TXT queries whose names hold base64-like data under one domain. It runs in two
namespaces of the test's own joined by a veth pair; tcpdump records the client's side;
the capture goes through the sniffer's offline path (flow engine, DNS windows, fast
rules). dns2tcp's names are long from its first query, so the per-source arm of
dns_tunnel (mean name length and query rate) already caught it before the windows (this
test does not show a fix); what it checks is that the windows' arm, whose thresholds were
chosen on iodine and benign DNS, never on dns2tcp, scores it on its own. Every process
the test starts is stopped by its PID and the namespaces are removed, also when it fails.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sniffer import dns_windows
from sniffer.config import SnifferConfig
from sniffer.pipeline import FlowPipeline
from sniffer.sources import PcapSource
from tests.support import NetnsPair, make_netns_pair, require_root_and, terminate, wait_for

pytestmark = [pytest.mark.netns]

ZONE = "dt.example.org"


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    require_root_and("ip", "ethtool", "tcpdump", "socat", "nc", "dns2tcpc", "dns2tcpd")
    with make_netns_pair("mldt-tn4", "198.51.100.2", "198.51.100.1") as p:
        yield p


def test_dns2tcp_tunnel_alerts_from_its_first_record(pair: NetnsPair, tmp_path: Path) -> None:
    """60 KB pushed through dns2tcp and a few short exchanges after it: the tunnel's
    first record (its first interim record, 5 s in) scores 0.5 or more from its DNS
    window alone (many distinct long subdomains, TXT queries)."""
    client, server = pair.ns_a, pair.ns_b
    conf = tmp_path / "dns2tcpd.conf"
    conf.write_text(
        f"listen = {pair.addr_b}\nport = 53\nuser = nobody\nchroot = /tmp\n"
        f"domain = {ZONE}\nresources = echo:127.0.0.1:7777\n"
    )
    capture, client_log = tmp_path / "tunnel.pcap", tmp_path / "client.log"
    procs: list[subprocess.Popen[bytes]] = []
    files = contextlib.ExitStack()

    def start(ns: str, *argv: str, out: Path | None = None) -> subprocess.Popen[bytes]:
        sink = files.enter_context(open(out, "wb")) if out else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=sink,
                                stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        return proc

    try:
        start(server, "socat", "TCP-LISTEN:7777,fork,reuseaddr", "EXEC:cat")
        start(server, "dns2tcpd", "-F", "-f", str(conf))
        dump = start(client, "tcpdump", "-i", pair.dev_a, "-U", "-w", str(capture),
                     "udp port 53", out=tmp_path / "tcpdump.log")  # fmt: skip
        wait_for(lambda: "listening on" in (tmp_path / "tcpdump.log").read_text(), 10,
                 "tcpdump to listen")  # fmt: skip
        start(client, "dns2tcpc", "-z", ZONE, "-r", "echo", "-l", "8888", pair.addr_b,
              out=client_log)  # fmt: skip
        wait_for(lambda: "Listening on port" in client_log.read_text(), 10, "dns2tcpc")
        pair.run(client, "bash", "-c",
                 "head -c 60000 /dev/urandom | timeout 40 nc -q 3 127.0.0.1 8888 >/dev/null",
                 check=False)  # fmt: skip
        for i in range(6):
            pair.run(client, "bash", "-c",
                     f"echo hello{i} | timeout 3 nc -q 1 127.0.0.1 8888 >/dev/null",
                     check=False)  # fmt: skip
        terminate(dump)
    finally:
        for proc in procs:
            terminate(proc, timeout=5)
        files.close()

    cfg = SnifferConfig()
    source = PcapSource([capture], cfg.capture)
    pipeline = FlowPipeline(cfg, dns_windows.for_source(source, cfg.context))
    done = [pipeline.process(ev, obs) for ev, obs in [*source.batches(), *source.flush()]]
    windows_arm = [pipeline.rules._dns_domain(d.context, len(d)) for d in done]
    tunnel = [
        (int(d.flows["last_ts_ns"][i]), float(arm[i]))
        for d, arm in zip(done, windows_arm, strict=True)
        for i in np.flatnonzero(d.flows["dns_queries"] > 20)
    ]
    assert tunnel, "no tunnel flow in the capture"
    first_ts, first_score = min(tunnel)
    assert first_score >= 0.5, tunnel
    starts = min(int(d.flows["first_ts_ns"].min()) for d in done if len(d))
    assert (first_ts - starts) / 1e9 <= 10, tunnel
