"""What several benchmarks share (imported as ``bench.common``; the repo is on sys.path)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from lab.topology import Topology

__all__ = ["MLD", "REPO", "GatewayLab", "decisions", "gateway_lab", "services", "shared_data",
           "wait"]  # fmt: skip

REPO = Path(__file__).resolve().parent.parent
MLD = str(REPO / ".venv" / "bin" / "mld")
# The services a gateway bench needs up (the gateway may start more: anomaly when enabled).
GATEWAY_SERVICES = ("detector", "firewall", "rag", "sniffer")


def shared_data() -> Path:
    """The shared captures: $MLD_SHARED_DATA, else ../shared/data beside the repo, else
    /work/shared/data (a clone elsewhere, as CI makes)."""
    override = os.environ.get("MLD_SHARED_DATA")
    if override:
        return Path(override)
    beside = REPO.parent / "shared" / "data"
    return beside if beside.is_dir() else Path("/work/shared/data")


def wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s; RuntimeError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def services(gw_ns: str, config: Path) -> list[dict[str, Any]]:
    """``mld status --json`` of the stack run from ``config`` in namespace ``gw_ns`` ([] while
    it does not answer)."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{gw_ns}", MLD, "status", "--json", "--config",
         str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return []
    found: list[dict[str, Any]] = json.loads(out.stdout)["services"]
    return found


def decisions(path: Path) -> list[dict[str, object]]:
    """The firewall's decision log, oldest first ([] before it exists or has its table)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY id")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


@dataclass
class GatewayLab:
    """A lab of its own prefix with ``mld gateway run`` up in its gateway namespace."""

    topo: Topology
    tmp: Path  # the bench's scratch folder (removed at the end)
    gw_ns: str
    run_dir: Path  # the gateway's run directory (alerts.json, its mld.yaml)
    state: Path  # node.state_dir (firewall/decisions.sqlite)
    stack: Path  # the stack's own config, for `mld status`
    proc: subprocess.Popen[bytes]


@contextmanager
def gateway_lab(name: str, prefix: str, settings: dict[str, Any]) -> Iterator[GatewayLab]:
    """Build the default lab topology under ``prefix``, run ``mld gateway run --outside
    outside --inside inside`` in its gateway with ``settings`` (sections merged over the
    bench's node and control ones) and wait until the four services report ok; on the way
    out, stop the gateway (SIGTERM, then SIGKILL after 90 s), take the lab down, remove its
    pinned maps and the scratch folder (kept when ``MLD_<NAME>_KEEP=1``), even on failure.

    Exits the process with status 1 when a lab of that prefix is up already."""
    from lab.lifecycle import down, up
    from lab.netns import list_namespaces
    from lab.topology import DEFAULT_TOPOLOGY, load_topology

    if list_namespaces(prefix):
        print(f"{name}: a lab with prefix {prefix} is up already: `mld lab down` it, or "
              "pass another --prefix", file=sys.stderr)  # fmt: skip
        raise SystemExit(1)
    tmp = Path(tempfile.mkdtemp(prefix=f"mld-{name}-"))
    topo_path = tmp / "topology.yaml"
    topo_path.write_text(
        DEFAULT_TOPOLOGY.read_text().replace("prefix: mld-lab", f"prefix: {prefix}")
    )
    topo = load_topology(topo_path)
    pin_dir = f"/sys/fs/bpf/{prefix}"
    gw_ns = topo.namespace("gateway")
    run_dir, state, config = tmp / "gw", tmp / "state", tmp / "mld.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"id": f"{name}-bench", "state_dir": str(state), "xdp_pin_dir": pin_dir},
        "control": {"lease_ttl_s": 3, "health_interval_s": 1.0},
        **settings,
    }))  # fmt: skip
    proc: subprocess.Popen[bytes] | None = None
    up(topo, tmp / "labrun")
    try:
        with open(tmp / "gateway.log", "wb") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{gw_ns}", MLD, "gateway", "run", "--outside",
                 "outside", "--inside", "inside", "--config", str(config), "--run-dir",
                 str(run_dir), "--etcd-port", "0"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started = proc
        stack = run_dir / "mld.yaml"

        def ready() -> bool:
            health = {s["component"]: s["health"] for s in services(gw_ns, stack)}
            return all(health.get(s) == "ok" for s in GATEWAY_SERVICES)

        wait(lambda: started.poll() is not None or ready(), 180, "the four services")
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: mld gateway run exited with {proc.returncode}; "
                               f"its log: {tmp / 'gateway.log'} (MLD_{name.upper()}_KEEP=1 "
                               "keeps it)")  # fmt: skip
        yield GatewayLab(topo, tmp, gw_ns, run_dir, state, stack, proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if list_namespaces(prefix):
            down(topo, tmp / "labrun")
        shutil.rmtree(pin_dir, ignore_errors=True)
        if os.environ.get(f"MLD_{name.upper()}_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"{name}: kept {tmp}", file=sys.stderr)
