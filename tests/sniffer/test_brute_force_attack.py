"""Password guessing performed against real services in two namespaces the test creates
(a veth pair, TSO/GSO off), captured on the wire with tcpdump and run through the whole
detection path as a user runs it (``mld detector analyze``: flow engine, fast rules,
forests, scoring). Both attacks went unnoticed before issue 18's brute_force rule: HTTP
was not a watched login service, and the 60 s window never held enough of a slow
guesser's attempts to alert."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.services import _FTP_SCRIPT
from tests.support import REPO, NetnsPair, make_netns_pair, require_root_and, terminate, wait_for

MLD = str(REPO / ".venv" / "bin" / "mld")

# A web server whose /admin/ wants HTTP basic auth and refuses every password (401), as
# nginx's auth_basic does for a wrong one; one request per connection (HTTP/1.0).
_HTTP_401 = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html><body><h1>401 Authorization Required</h1></body></html>\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="admin"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        sys.stderr.write("401 " + self.client_address[0] + "\n")
http.server.ThreadingHTTPServer((sys.argv[1], 80), H).serve_forever()
"""


def _in(ns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *args]


def _listening(pair: NetnsPair, port: int) -> bool:
    out = subprocess.run(_in(pair.ns_b, "ss", "-Hltn"), capture_output=True, text=True).stdout
    return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if line.split())


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    require_root_and("ip", "ethtool", "nsenter", "tcpdump", "socat", "medusa", "curl")
    with make_netns_pair("mldt-bf", "192.0.2.1", "192.0.2.2") as p:
        yield p


class _Run:
    """Processes started by a test, stopped by PID at the end even when it fails."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            terminate(proc, timeout=10)


@pytest.fixture
def procs() -> Iterator[_Run]:
    run = _Run()
    try:
        yield run
    finally:
        run.stop_all()


def _capture(pair: NetnsPair, procs: _Run, pcap: Path, port: int) -> subprocess.Popen[bytes]:
    """tcpdump on the attacker's NIC; returns once the capture file is open."""
    proc = procs.start(
        _in(pair.ns_a, "tcpdump", "-i", pair.dev_a, "-U", "-s", "256", "-w", str(pcap),
            "-c", "100000", "tcp", "port", str(port))
    )  # fmt: skip
    wait_for(lambda: pcap.exists() and pcap.stat().st_size >= 24, 20, "tcpdump's capture file")
    return proc


def _analyze(pcap: Path, tmp_path: Path) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [MLD, "detector", "analyze", str(pcap), "-q"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _guessing_alerts(rows: list[dict[str, object]], port: int) -> tuple[int, int]:
    """(attack flows, those alerted as bruteforce by the brute_force rule)."""
    attack = [r for r in rows if r["src_ip"] == "192.0.2.1" and r["dst_port"] == port]
    alerted = [
        r for r in attack
        if r["fast_rule"] == "brute_force" and r["family"] == "bruteforce"
        and r["label"] != "benign"
    ]  # fmt: skip
    return len(attack), len(alerted)


def test_medusa_http_basic_auth_guessing_is_alerted(
    pair: NetnsPair, procs: _Run, tmp_path: Path
) -> None:
    """The attack: medusa (not the lab's hydra) guesses 200 passwords for /admin/ on a
    web server that answers each with a 401 page, four connections at a time. Before:
    port 80 was not a login port, 0 flows alerted."""
    server = procs.start(_in(pair.ns_b, "python3", "-c", _HTTP_401, pair.addr_b))
    wait_for(lambda: _listening(pair, 80) or server.poll() is not None, 20, "the web server")
    assert server.poll() is None, server.stderr.read() if server.stderr else ""
    pcap = tmp_path / "http.pcap"
    dump = _capture(pair, procs, pcap, 80)
    words = tmp_path / "words.txt"
    words.write_text("".join(f"guess{i}\n" for i in range(200)))
    attack = subprocess.run(
        _in(pair.ns_a, "medusa", "-b", "-h", pair.addr_b, "-u", "admin", "-P", str(words),
            "-M", "http", "-m", "DIR:admin/", "-t", "4"),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert "ACCOUNT CHECK" in attack.stdout, attack.stdout[-500:] + attack.stderr[-500:]
    terminate(dump)
    flows, alerted = _guessing_alerts(_analyze(pcap, tmp_path), 80)
    assert flows >= 100, flows  # a connection may carry two guesses
    # The rate ramps from 30 to 120 requests a minute: the flows from about the 75th on
    # (one request each here; a few refused connections carry none) alert.
    assert alerted >= flows - 80 and alerted >= 40, (flows, alerted)


def test_slow_ftp_guessing_by_a_script_is_alerted(
    pair: NetnsPair, procs: _Run, tmp_path: Path
) -> None:
    """The attack: a custom script (curl in a loop) tries 34 passwords on an FTP login
    service, one connection each, pausing 2 s between them (~70 s). Before: the 60 s
    window held about 28 attempts (score 0.36, no alert); the 5-minute window reaches 25
    attempts (0.5) and alerts the rest."""
    log = tmp_path / "ftp.log"
    log.touch()
    script = tmp_path / "ftp.sh"
    script.write_text(_FTP_SCRIPT)
    script.chmod(0o755)
    procs.start(
        _in(pair.ns_b, "env", f"FTP_LOG={log}", "socat",
            f"TCP-LISTEN:21,bind={pair.addr_b},fork,reuseaddr", f"EXEC:{script}")
    )  # fmt: skip
    wait_for(lambda: _listening(pair, 21), 20, "the FTP service")
    pcap = tmp_path / "ftp.pcap"
    dump = _capture(pair, procs, pcap, 21)
    loop = (
        f"for i in $(seq 34); do curl -s -m 5 --user labuser:pw$i ftp://{pair.addr_b}/ "
        ">/dev/null; sleep 2; done"
    )
    subprocess.run(_in(pair.ns_a, "bash", "-c", loop), timeout=240, check=False)
    assert log.read_text().count("FTP login failed from 192.0.2.1") == 34
    terminate(dump)
    flows, alerted = _guessing_alerts(_analyze(pcap, tmp_path), 21)
    assert flows == 34
    assert alerted >= 8, (flows, alerted)
