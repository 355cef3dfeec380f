"""``mld lab up``, ``down`` and ``status``: build the topology, start services, tear down.

What the lab made is found again by name (every namespace starts with the topology's
prefix) and by the state file in the run directory (service PIDs), so ``down`` cleans up
after a crashed ``up`` and ``up`` first removes leftovers of an earlier run. Nothing is
created in the root namespace: veth pairs are made with both ends already in the lab's
namespaces, and deleting a namespace removes its links and any XDP program on them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from base.errors import LabError
from lab.netns import (
    delete_namespace,
    kill_pids,
    list_namespaces,
    run,
    run_in,
    xdp_attachments,
)
from lab.services import ServiceProcess, reap, start_services
from lab.topology import Topology, load_topology

__all__ = ["DEFAULT_RUN_DIR", "LabState", "down", "status", "up"]

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path(os.environ.get("MLD_LAB_RUN_DIR", "/run/mld-lab"))
STATE_FILE = "state.json"


@dataclass
class LabState:
    prefix: str
    topology: str
    run_dir: str
    started: float
    processes: list[ServiceProcess]

    def save(self) -> None:
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir: Path) -> LabState | None:
        try:
            raw: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        procs = [
            ServiceProcess(**{**p, "argv": tuple(p["argv"])}) for p in raw.pop("processes", [])
        ]
        return cls(processes=procs, **raw)


def _veth_name(topo: Topology, host: str, nic: str) -> str:
    # The bridge-side end lives in the switch namespace; short and unique per host and NIC.
    index = list(topo.hosts).index(host)
    return f"p{index}-{nic}"[:15]


def _build(topo: Topology) -> None:
    for ns in topo.namespaces():
        run(["ip", "netns", "add", ns])
        run_in(ns, "ip", "link", "set", "lo", "up")
    for seg in topo.segments:
        sw = topo.switch_namespace(seg)
        run_in(sw, "ip", "link", "add", "br0", "type", "bridge")
        run_in(sw, "ip", "link", "set", "br0", "up")
        # A switch forwards, it does not filter: no IPv6 on its ports, no bridge netfilter.
        run_in(sw, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    for host in topo.hosts.values():
        ns = topo.namespace(host.name)
        if host.forward:
            run_in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            run_in(ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for nic in host.nics:
            sw = topo.switch_namespace(nic.segment)
            port = _veth_name(topo, host.name, nic.name)
            run(
                [
                    "ip",
                    "-n",
                    ns,
                    "link",
                    "add",
                    nic.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    sw,
                ]
            )
            run_in(sw, "ip", "link", "set", port, "master", "br0")
            run_in(sw, "ip", "link", "set", port, "up")
            # Offloads off: generic XDP and captures see wire-sized packets, as on a real NIC.
            run_in(
                ns, "ethtool", "-K", nic.name, "tso", "off", "gso", "off", "gro", "off", check=False
            )
            prefix4 = topo.segments[nic.segment].ipv4.prefixlen
            run_in(ns, "ip", "addr", "add", f"{nic.ipv4}/{prefix4}", "dev", nic.name)
            for extra in nic.extra_ipv4:
                run_in(ns, "ip", "addr", "add", f"{extra}/{prefix4}", "dev", nic.name)
            seg6 = topo.segments[nic.segment].ipv6
            if nic.ipv6 and seg6:
                run_in(
                    ns,
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    f"{nic.ipv6}/{seg6.prefixlen}",
                    "dev",
                    nic.name,
                    "nodad",
                )
            run_in(ns, "ip", "link", "set", nic.name, "up")
        gw4 = topo.gateway_address(host, 4)
        if gw4:
            run_in(ns, "ip", "route", "add", "default", "via", gw4)
        gw6 = topo.gateway_address(host, 6)
        if gw6 and host.ipv6:
            run_in(ns, "ip", "-6", "route", "add", "default", "via", gw6)


def _wait_reachable(topo: Topology, timeout_s: float = 10.0) -> None:
    """Every routed host pings the first address of every other host (IPv4)."""
    targets = [h.ipv4 for h in topo.hosts.values()]
    for host in topo.hosts.values():
        if host.route_via is None:
            continue
        ns = topo.namespace(host.name)
        for addr in targets:
            deadline = time.monotonic() + timeout_s
            while run_in(ns, "ping", "-c1", "-W1", "-q", addr, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise LabError(f"{host.name} cannot reach {addr} after {timeout_s:g} s")
                time.sleep(0.2)


def down(
    topo: Topology | None = None, run_dir: Path = DEFAULT_RUN_DIR, keep_logs: bool = True
) -> dict[str, Any]:
    """Remove everything the lab made: processes by PID, namespaces (with veths and XDP).

    Works after a crash: PIDs come from the state file and from the namespaces themselves.
    """
    topo = topo or load_topology()
    state = LabState.load(run_dir)
    prefixes = {topo.prefix} | ({state.prefix} if state else set())
    killed = kill_pids([p.pid for p in state.processes]) if state else []
    removed = []
    for prefix in sorted(prefixes):
        for ns in list_namespaces(prefix):
            killed += delete_namespace(ns)
            removed.append(ns)
    # The blocklist pin folder `mld lab dev` gives the lab's XDP program (lab/dev.py).
    for prefix in prefixes:
        shutil.rmtree(Path("/sys/fs/bpf") / prefix, ignore_errors=True)
    if run_dir.exists():
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(run_dir, ignore_errors=True)
    for pid in killed:
        reap(pid)
    left = [ns for prefix in prefixes for ns in list_namespaces(prefix)]
    if left:
        raise LabError(f"namespaces still present after down: {', '.join(left)}")
    log.info("lab down: removed %d namespaces, stopped %d processes", len(removed), len(killed))
    return {"namespaces_removed": removed, "processes_stopped": sorted(set(killed))}


def up(topo: Topology | None = None, run_dir: Path = DEFAULT_RUN_DIR) -> LabState:
    """Build the lab from scratch (cleaning leftovers first) and start its services."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bind mounts); run it with sudo")
    topo = topo or load_topology()
    leftovers = list_namespaces(topo.prefix)
    if leftovers or LabState.load(run_dir):
        log.warning("removing leftovers of an earlier lab: %s", ", ".join(leftovers) or "state")
        down(topo, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = LabState(topo.prefix, str(topo.source), str(run_dir), time.time(), [])
    state.save()
    try:
        _build(topo)
        _wait_reachable(topo)
        state.processes = start_services(topo, run_dir)
        state.save()
    except BaseException:
        # Daemons started before the failure are not in the state yet; down finds them
        # through their namespaces.
        down(topo, run_dir)
        raise
    log.info("lab up: %d namespaces, %d services", len(topo.namespaces()), len(state.processes))
    return state


def status(topo: Topology | None = None, run_dir: Path = DEFAULT_RUN_DIR) -> dict[str, Any]:
    """What is up: namespaces, addresses, services and whether their PIDs live, XDP programs."""
    topo = topo or load_topology()
    state = LabState.load(run_dir)
    present = set(list_namespaces(topo.prefix))
    hosts = {}
    for host in topo.hosts.values():
        ns = topo.namespace(host.name)
        hosts[host.name] = {
            "namespace": ns,
            "up": ns in present,
            "role": host.role,
            "addresses": {
                n.name: [str(n.ipv4)] + ([str(n.ipv6)] if n.ipv6 else []) for n in host.nics
            },
            "xdp": xdp_attachments(ns) if ns in present else [],
        }
    services = []
    for p in state.processes if state else []:
        alive = Path(f"/proc/{p.pid}").exists()
        services.append(
            {"service": p.service, "namespace": p.namespace, "pid": p.pid, "alive": alive}
        )
    expected = set(topo.namespaces())
    return {
        "up": expected <= present and state is not None and all(s["alive"] for s in services),
        "run_dir": str(run_dir),
        "started": state.started if state else None,
        "namespaces": sorted(present),
        "missing_namespaces": sorted(expected - present),
        "hosts": hosts,
        "services": services,
    }
