"""Shared test helpers: capability checks and network namespaces the tests create themselves.

Tests that need a capability carry a marker (bpf, netns, etcd, llm) and skip with the
reason when it is missing; CI installs everything, so in CI nothing skips. Fixtures defined
here are registered in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from control.etcd_server import EtcdServer
from lab.topology import DEFAULT_TOPOLOGY, Topology, load_topology

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """The shared captures (../shared/data beside the repo; $MLD_SHARED_DATA overrides).

    A clone elsewhere (CI clones into a temp dir) falls back to /work/shared/data.
    """
    override = os.environ.get("MLD_SHARED_DATA")
    if override:
        return Path(override)
    beside = REPO.parent / "shared" / "data"
    return beside if beside.is_dir() else Path("/work/shared/data")


SHARED_DATA = _shared_data()


def require_root_and(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, BPF)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (make install provides it)")


def require_etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd binary (apt-get install etcd-server; make install does)")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd on 127.0.0.1 (free ports, temp data dir) for the whole session. Tests
    share it and keep apart by key prefix (:func:`etcd_prefix`); a test that stops or
    restarts etcd starts its own EtcdServer instead. Authenticated like the etcd mld
    starts: TLS client certificates from ``server.pki_dir`` (control.credentials_dir)."""
    require_etcd()
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/mldtest-{uuid.uuid4().hex[:10]}"


def terminate(proc: subprocess.Popen[Any], timeout: float = 20.0) -> tuple[Any, Any]:
    """Stop a child the clean way (SIGTERM), SIGKILL if it takes over ``timeout`` s; the
    output it left on its pipes (None for an output that is not a pipe)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def bench_keys(script: str, *args: str, timeout: float) -> dict[str, str]:
    """Run ``bench/<script> --quick [args]``; the key=value pairs of its last line."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return dict(part.split("=", 1) for part in last.split())


def modules_imported_by(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``.

    The lazy-import tests run their code in a new process: this one has imported
    everything the suite touched already.
    """
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {modules!r} if m in sys.modules))\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    return proc.stdout.split()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class FakeClock:
    """A monotonic clock the test moves by hand (for grace periods, ages, intervals)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (addr_a on dev_a) and ``b``."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str

    def run(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *args, check=check)


@contextlib.contextmanager
def make_netns_pair(
    prefix: str, addr_a: str, addr_b: str, offloads: tuple[str, ...] = ("tso", "gso")
) -> Iterator[NetnsPair]:
    """Namespaces ``<prefix>-a-<tag>`` and ``<prefix>-b-<tag>`` joined by a veth pair with
    ``addr_a``/``addr_b`` (/24) and ``offloads`` turned off on both ends; removed on exit,
    also when the test fails."""
    tag = uuid.uuid4().hex[:6]
    short = prefix.removeprefix("mldt-")[:3]
    pair = NetnsPair(
        ns_a=f"{prefix}-a-{tag}",
        ns_b=f"{prefix}-b-{tag}",
        dev_a=f"{short}a{tag}",
        dev_b=f"{short}b{tag}",
        addr_a=addr_a,
        addr_b=addr_b,
    )
    try:
        sh("ip", "netns", "add", pair.ns_a)
        sh("ip", "netns", "add", pair.ns_b)
        sh("ip", "link", "add", pair.dev_a, "netns", pair.ns_a, "type", "veth", "peer",
           "name", pair.dev_b, "netns", pair.ns_b)  # fmt: skip
        ends = ((pair.ns_a, pair.dev_a, pair.addr_a), (pair.ns_b, pair.dev_b, pair.addr_b))
        off = [arg for name in offloads for arg in (name, "off")]
        for ns, dev, addr in ends:
            pair.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            pair.run(ns, "ip", "link", "set", dev, "up")
            pair.run(ns, "ip", "link", "set", "lo", "up")
            pair.run(ns, "ethtool", "-K", dev, *off)
        yield pair
    finally:
        # Deleting a namespace destroys its veth end and any XDP program attached to it.
        for ns in (pair.ns_a, pair.ns_b):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Namespaces and a veth pair with TEST-NET-1 addresses; removed even if the test fails.

    TSO/GSO are off on both ends so every packet is seen as one packet by generic XDP.
    """
    require_root_and("ip", "ethtool")
    with make_netns_pair("mldt", "192.0.2.1", "192.0.2.2") as pair:
        yield pair


@dataclass(frozen=True)
class NetnsRouter:
    """Three namespaces a ─ r ─ b: r forwards between its two veths ``r_a`` and ``r_b``."""

    ns_a: str
    ns_r: str
    ns_b: str
    r_a: str
    r_b: str
    addr_a: str
    addr_b: str
    addr6_a: str
    addr6_b: str

    def run(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *args, check=check)


@pytest.fixture
def netns_router() -> Iterator[NetnsRouter]:
    """a (192.0.2.1, 2001:db8:a::1) ─ r ─ b (198.51.100.1, 2001:db8:b::1), r routes both
    families; removed even if the test fails.

    TSO/GSO/GRO are off everywhere so XDP on r sees every packet as it was sent.
    """
    require_root_and("ip", "ethtool", "sysctl")
    tag = uuid.uuid4().hex[:6]
    t = NetnsRouter(
        ns_a=f"mldt-ra-{tag}",
        ns_r=f"mldt-rr-{tag}",
        ns_b=f"mldt-rb-{tag}",
        r_a=f"mra{tag}",
        r_b=f"mrb{tag}",
        addr_a="192.0.2.1",
        addr_b="198.51.100.1",
        addr6_a="2001:db8:a::1",
        addr6_b="2001:db8:b::1",
    )
    try:
        for ns in (t.ns_a, t.ns_r, t.ns_b):
            sh("ip", "netns", "add", ns)
            t.run(ns, "ip", "link", "set", "lo", "up")
        plan = (
            (t.ns_a, f"mha{tag}", t.r_a, t.addr_a, "192.0.2.254", t.addr6_a, "2001:db8:a::fe"),
            (t.ns_b, f"mhb{tag}", t.r_b, t.addr_b, "198.51.100.254", t.addr6_b, "2001:db8:b::fe"),
        )
        for ns, dev, rdev, addr, gw, addr6, gw6 in plan:
            sh("ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", rdev,
               "netns", t.ns_r)  # fmt: skip
            for n, d, a, a6 in ((ns, dev, addr, addr6), (t.ns_r, rdev, gw, gw6)):
                t.run(n, "ip", "addr", "add", f"{a}/24", "dev", d)
                t.run(n, "ip", "-6", "addr", "add", f"{a6}/64", "dev", d, "nodad")
                t.run(n, "ip", "link", "set", d, "up")
                t.run(n, "ethtool", "-K", d, "tso", "off", "gso", "off", "gro", "off")
            t.run(ns, "ip", "route", "add", "default", "via", gw)
            t.run(ns, "ip", "-6", "route", "add", "default", "via", gw6)
        t.run(t.ns_r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        t.run(t.ns_r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        t.run(t.ns_r, "sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0")
        yield t
    finally:
        for ns in (t.ns_a, t.ns_r, t.ns_b):
            sh("ip", "netns", "del", ns, check=False)


def lab_topology(tmp: Path, prefix: str) -> Topology:
    """The default lab topology under another namespace prefix, so a test's lab never
    touches a developer's running ``mld-lab``."""
    path = tmp / "topology.yaml"
    path.write_text(DEFAULT_TOPOLOGY.read_text().replace("prefix: mld-lab", f"prefix: {prefix}"))
    return load_topology(path)
