"""Live equals offline for the DNS windows (issue 18): the same DNS-tunnel-like traffic gives
every record the same FlowRecord.dns_window, seen live by ``mld sniffer run`` and read back
from its capture by ``mld sniffer flows``.

Three namespaces: a client ``a``, a router ``r`` and a server ``b`` (tests/support.py
netns_router). ``mld sniffer run --iface r_a --iface r_b`` runs in the router, as on a
gateway: the XDP program on both interfaces and the live DNS query reader
(sniffer/dns_windows.py, native/dnswin.c, libpcap on the same interfaces). tcpdump records
the router's client-side interface, which every packet of the run crosses once. The
client sends, over IPv4 and IPv6, what a DNS tunnel sends: one long-lived flow of TXT
queries whose names carry fresh base32 data under one domain (3.3 s on a fixed schedule, so
interim records come on both sides, interim_s = 1 s), short flows of NULL and CNAME
queries under the same domain, and a few plain A queries of another domain. The server
answers every query.

Compared per record (same flow, same place in the flow's sequence of interim and final
records): every DnsDomainWindow field, exactly. The records' times differ by microseconds
(XDP stamps a packet before libpcap does: 1.5 to 36 us here), which the windows must not
feel.

What this test found, and failed on before the fixes in native/dnswin.c:
* live, every forwarded query counted twice: the DNS reader took it in on r_a and again as
  it left by r_b (queries and query_rate doubled: 48 against 24 on the last record; XDP
  sees inbound packets only, so the reader now takes inbound packets only);
* interim records, whose last packet is the query that made the record due, counted that
  query offline (one time in the capture) but not live, where libpcap's stamp of it lies
  24 to 36 us after XDP's (queries 4 against 5, distinct subdomains, entropy and rate off
  with them); the window now ends just before the record's time on both sides.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, NetnsRouter, require_root_and, terminate, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]

MLD = str(REPO / ".venv" / "bin" / "mld")
INTERIM_S = 1.0

# Runs inside the server namespace: answers every DNS query (v4 and v6) with the question
# echoed and QR set; answers go to the client's port, so the DNS reader skips them.
SERVER = """
import socket, sys, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        d, peer = s.recvfrom(4096)
        s.sendto(d[:2] + bytes([d[2] | 0x80, 0x80]) + d[4:], peer)
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    threading.Thread(target=serve, args=(fam, addr), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Runs inside the client namespace: the tunnel-like traffic, bounded (about 150 queries).
CLIENT = """
import base64, os, socket, struct, sys, time
A, TXT, CNAME, NULL = 1, 16, 5, 10
def query(qid, name, qtype):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", qtype, 1)
def data(n):
    return base64.b32encode(os.urandom(n)).decode().rstrip("=").lower()
def ask(sock, addr, qid, name, qtype):
    sock.sendto(query(qid, name, qtype), (addr, 53))
    sock.recvfrom(4096)
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    # The tunnel's long flow: one socket, a query every 0.3 s for 3.3 s (interim records
    # at about 1.2 s and 2.4 s: no packet lies near where one falls due).
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(3)
    t0 = time.monotonic()
    for i in range(12):
        time.sleep(max(0.0, t0 + 0.3 * i - time.monotonic()))
        ask(u, addr, i, f"{data(30)}.{data(8)}.{i}.t.tunnel.example", TXT)
    u.close()
    # Short flows of the same tunnel (new source ports), other record types.
    for k in range(4):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.settimeout(3)
        for j, qtype in enumerate((NULL, CNAME, TXT)):
            ask(u, addr, 100 + 3 * k + j, f"{data(25)}.{k}.t.tunnel.example", qtype)
        u.close()
    # Plain lookups of another domain, twice the same name.
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(3)
    for j in range(2):
        ask(u, addr, 200 + j, "www.example.org", A)
    u.close()
print("done", flush=True)
"""

WINDOW_FIELDS = (
    "window_s",
    "queries",
    "distinct_subdomains",
    "subdomain_mean_len",
    "max_label_len",
    "long_subdomain_entropy",
    "query_rate",
    "data_type_share",
)


def _dns_records(lines: str, t: NetnsRouter) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The records of the client's DNS flows, per flow, in time order."""
    flows: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for line in lines.splitlines():
        r = json.loads(line)
        if r["dst_port"] == 53 and r["protocol"] == 17 and r["src_addr"] in (t.addr_a, t.addr6_a):
            flows[(r["src_addr"], r["src_port"], r["dst_addr"])].append(r)
    for records in flows.values():
        records.sort(key=lambda r: int(r["last_ts_ns"]))
    return dict(flows)


def test_dns_windows_live_equal_offline(netns_router: NetnsRouter, tmp_path: Path) -> None:
    require_root_and("tcpdump", "nsenter")
    pytest.importorskip("bcc")
    t = netns_router
    pin = Path("/sys/fs/bpf") / f"mldt-dnsle-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "mld.yaml"
    cfg.write_text(
        f"node: {{id: dnsle, state_dir: {tmp_path / 'state'}, xdp_pin_dir: {pin}}}\n"
        f"sniffer:\n  capture: {{interim_s: {INTERIM_S}}}\n  publish: {{enabled: false}}\n"
    )
    live_out, pcap = tmp_path / "live.jsonl", tmp_path / "r_a.pcap"
    sniffer_log, dump_log = tmp_path / "sniffer.log", tmp_path / "tcpdump.log"
    router = ["nsenter", f"--net=/run/netns/{t.ns_r}"]  # bpffs stays visible (pin dir)
    procs: list[subprocess.Popen[Any]] = []
    logs = [sniffer_log.open("wb"), dump_log.open("wb")]
    try:
        dump = subprocess.Popen(
            [*router, "tcpdump", "-i", t.r_a, "-w", str(pcap), "-U", "-s", "0",
             "--time-stamp-precision", "nano", "-n", "--immediate-mode"],
            stdout=logs[1], stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(dump)
        wait_for(lambda: "listening on" in dump_log.read_text(), 20, "tcpdump to listen")
        sniffer = subprocess.Popen(
            [*router, MLD, "sniffer", "run", "--iface", t.r_a, "--iface", t.r_b,
             "--no-publish", "--json-out", str(live_out), "--config", str(cfg)],
            stdout=logs[0], stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(sniffer)
        wait_for(
            lambda: sniffer.poll() is not None or "sniffing on" in sniffer_log.read_text(),
            90,
            "the sniffer to attach",
        )
        assert sniffer.poll() is None, sniffer_log.read_text()
        server = subprocess.Popen(
            ["ip", "netns", "exec", t.ns_b, sys.executable, "-c", SERVER, t.addr_b, t.addr6_b],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = t.run(t.ns_a, sys.executable, "-c", CLIENT, t.addr_b, t.addr6_b)
        assert client.stdout.strip() == "done", client.stderr
        # SIGTERM: the sniffer flushes its flow table (the final records) and stops.
        sniffer.send_signal(signal.SIGTERM)
        sniffer.wait(timeout=60)
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=30)
    finally:
        for proc in reversed(procs):
            terminate(proc, timeout=10)
        for f in logs:
            f.close()
        shutil.rmtree(pin, ignore_errors=True)
    assert sniffer.returncode in (0, 143), sniffer_log.read_text()[-3000:]

    offline = subprocess.run(
        [MLD, "sniffer", "flows", "--json", "--quiet", "--config", str(cfg), str(pcap)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr[-3000:]
    live_flows = _dns_records(live_out.read_text(), t)
    off_flows = _dns_records(offline.stdout, t)
    # Per family: the long flow, 4 short ones, the plain lookups.
    assert len(off_flows) == 12, sorted(off_flows)
    assert sorted(live_flows) == sorted(off_flows)
    # Each family's first flow, the tunnel's long one, had interim records (other flows may
    # too, when the loaded machine stretches them past interim_s: both sides then have them).
    for src in (t.addr_a, t.addr6_a):
        first = min((recs for k, recs in off_flows.items() if k[0] == src),
                    key=lambda recs: int(recs[0]["first_ts_ns"]))  # fmt: skip
        assert len(first) >= 2 and first[0].get("interim"), first
    diffs = []
    for key, off_records in sorted(off_flows.items()):
        live_records = live_flows[key]
        flags = [r.get("interim", False) for r in off_records]
        assert [r.get("interim", False) for r in live_records] == flags, key
        for lv, of in zip(live_records, off_records, strict=True):
            lw, ow = lv["dns_window"], of["dns_window"]
            diffs += [
                (key, of.get("interim", False), f, lw.get(f), ow.get(f))
                for f in WINDOW_FIELDS
                if lw.get(f, 0) != ow.get(f, 0)
            ]
    assert not diffs, "(flow, interim, field, live, offline): " + json.dumps(diffs)
    # Not a comparison of two empty windows: each family's last record (its plain lookups,
    # the answer last) sees the tunnel's 24 queries, every name different, all of types
    # that carry data, labels of 48 characters (30 random bytes in base32).
    for src in (t.addr_a, t.addr6_a):
        last = max((r for k, recs in off_flows.items() if k[0] == src for r in recs),
                   key=lambda r: int(r["last_ts_ns"]))  # fmt: skip
        w = last["dns_window"]
        assert (w["queries"], w["distinct_subdomains"], w["max_label_len"]) == (24, 24, 48), w
        assert w["data_type_share"] == 1.0 and w["long_subdomain_entropy"] > 4.0, w
