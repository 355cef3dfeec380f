"""Helpers of the anomaly tests: real flows into an event store, and a namespace pair of
our own (``mldt-anom-*``) with a web service, a new UDP service and a capture."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from config import load_config
from detector.analysis import scored_events
from detector.features import columns_from_records, feature_matrix
from detector.scoring import default_scorer
from proto.events_pb2 import ScoredEvent
from rag.store import EventStore
from tests.support import SHARED_DATA, NetnsPair, make_netns_pair, require_root_and, terminate

__all__ = [
    "anom_pair",
    "benign_captures",
    "capture_events",
    "features_of",
    "fill_store",
    "live_drift_capture",
]


def benign_captures() -> list[Path]:
    """The nDPI protocol captures: real, varied, benign traffic (the fuzzed and oss-fuzz
    ones left out)."""
    ndpi = SHARED_DATA / "pcaps/ndpi"
    return sorted(p for p in ndpi.glob("*.pcap*") if not p.name.startswith(("fuzz", "oss")))


def capture_events(
    paths: Sequence[Path], *, start: float, spacing: float = 100.0
) -> list[ScoredEvent]:
    """ScoredEvents of captures through the real flow engine and the shipped bundle, each
    capture moved to ``start + i * spacing`` and its flows kept within ``spacing`` (some
    fuzzed captures jump years ahead). One event per flow, its final record: the store
    folds a flow's interim records into its row (issue 18), and the tests count flows."""
    cfg = load_config()
    scorer = default_scorer(cfg.detector)
    out: list[ScoredEvent] = []
    for i, path in enumerate(paths):
        t0 = start + i * spacing
        for batch in scored_events([path], cfg.sniffer, scorer, shift_to=t0):
            out += [
                e
                for e in batch
                if t0 - 1 <= e.record.first_ts_ns / 1e9 < t0 + spacing - 1 and not e.record.interim
            ]
    return out


def fill_store(db: Path, events: Sequence[ScoredEvent]) -> None:
    store = EventStore(db)
    try:
        for i in range(0, len(events), 2000):
            chunk = list(events[i : i + 2000])
            store.add(chunk, "test", [""] * len(chunk))
    finally:
        store.close()


def features_of(events: Sequence[ScoredEvent]) -> npt.NDArray[np.float32]:
    return feature_matrix(columns_from_records([e.record for e in events]))


@pytest.fixture
def anom_pair() -> Iterator[NetnsPair]:
    """Two namespaces (mldt-anom-a-*, mldt-anom-b-*) joined by a veth pair; removed after."""
    require_root_and("ip", "ethtool", "tcpdump")
    with make_netns_pair("mldt-anom", "198.51.100.1", "198.51.100.2",
                         offloads=("tso", "gso", "gro")) as pair:  # fmt: skip
        yield pair


HTTP_PORT, NEW_PORT = 8080, 47000

# The server namespace: a web server (the usual traffic) and, from the start, the new
# service (UDP request/response on an unusual port): it only gets traffic in phase 2.
_SERVERS = """
import http.server, socketserver, sys, threading
class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"x" * int(self.path.strip("/") or 100)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(b"r" * 700 + data, self.client_address)
addr, new_port, web_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
udp = socketserver.ThreadingUDPServer((addr, new_port), Echo)
threading.Thread(target=udp.serve_forever, daemon=True).start()
web = http.server.ThreadingHTTPServer((addr, web_port), Web)
print("ready", flush=True)
web.serve_forever()
"""

# The client namespace: phase 1 web only, phase 2 web and the new service, phase 3 web.
_CLIENT = """
import random, socket, sys, time, urllib.request
addr = sys.argv[1]
web_port, new_port, n1, n2web, n2new, n3 = map(int, sys.argv[2:8])
rng = random.Random(1)
def web():
    size = rng.choice([200, 1500, 4000, 12000])
    urllib.request.urlopen(f"http://{addr}:{web_port}/{size}", timeout=5).read()
def new():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(3):
        s.sendto(b"q" * 40, (addr, new_port))
        s.recvfrom(4096)
    s.close()
for _ in range(n1):
    web()
plan = ["w"] * n2web + ["n"] * n2new
rng.shuffle(plan)
for p in plan:
    web() if p == "w" else new()
for _ in range(n3):
    web()
print("done", flush=True)
"""


def live_drift_capture(
    pair: NetnsPair, pcap: Path, n1: int, n2web: int, n2new: int, n3: int
) -> None:
    """Run the three phases of real traffic between the namespaces, captured to ``pcap``
    by tcpdump on the server's interface."""
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.ns_b,
            sys.executable,
            "-c",
            _SERVERS,
            pair.addr_b,
            str(NEW_PORT),
            str(HTTP_PORT),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.ns_b,
            "tcpdump",
            "-i",
            pair.dev_b,
            "-U",
            "-n",
            "-B",
            "16384",
            "-s",
            "256",
            "-w",
            str(pcap),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert dump.stderr is not None and "listening" in dump.stderr.readline()
        client = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pair.ns_a,
                sys.executable,
                "-c",
                _CLIENT,
                pair.addr_b,
                str(HTTP_PORT),
                str(NEW_PORT),
                str(n1),
                str(n2web),
                str(n2new),
                str(n3),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert client.returncode == 0, client.stderr
        time.sleep(1.0)  # the last packets reach the capture
    finally:
        _out, err = terminate(dump)
        terminate(server)
    dropped = [line for line in (err or "").splitlines() if "dropped by kernel" in line]
    assert dropped and dropped[0].startswith("0 "), f"tcpdump lost packets: {err}"
