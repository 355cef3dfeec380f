"""Checks of a dual-NIC box before the gateway stack starts (``mld gateway run --check``).

Each check reads the running system (``/proc/sys``, ``/sys/class/net``, ``ethtool -k``)
and says what to change. ``error`` stops the start (the gateway cannot work as asked),
``warning`` is printed and the start goes on:

* root (XDP, bpffs and the blocklist need it) — error;
* both interfaces exist and are up — error when missing, warning when down;
* IPv4 forwarding on (``net.ipv4.ip_forward``): without it nothing is in transit to block
  — error; IPv6 forwarding — warning;
* reverse-path filtering per NIC (the effective value is the higher of ``all`` and the
  NIC's): 0 lets spoofed sources through the gateway — warning;
* offloads: with LRO on, native XDP does not attach; with GRO on, generic XDP sees merged
  super-frames (fewer, larger packets than on the wire) — warning with the ethtool line.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Check", "preflight"]

Level = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Check:
    level: Level
    what: str
    detail: str


def _sysctl(path: str) -> str | None:
    try:
        return Path("/proc/sys", path).read_text().strip()
    except OSError:
        return None


def _links() -> dict[str, str]:
    """Interface name -> operational state, in this process's network namespace (``ip``;
    /sys/class/net shows the namespace /sys was mounted in, not necessarily ours)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "link", "show"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        return {link["ifname"]: str(link.get("operstate", "UNKNOWN")) for link in json.loads(out)}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def _offloads(dev: str) -> dict[str, bool]:
    try:
        out = subprocess.run(
            ["ethtool", "-k", dev], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name in ("generic-receive-offload", "large-receive-offload"):
            found[name] = value.strip().startswith("on")
    return found


def preflight(outside: str, inside: str, xdp_mode: str = "auto") -> list[Check]:
    """Every check, in order (see the module docstring)."""
    checks: list[Check] = []
    if os.geteuid() == 0:
        checks.append(Check("ok", "root", "running as root"))
    else:
        checks.append(Check("error", "root", "XDP and the pinned blocklist need root: "
                                              "run with sudo or as the mld service"))  # fmt: skip
    devices = [d for d in (outside, inside) if d]
    links = _links()
    for dev in devices:
        if dev not in links:
            have = ", ".join(sorted(links))
            checks.append(Check("error", f"interface {dev}", f"no such interface (have: {have})"))
            continue
        state = links[dev].lower()
        if state in ("up", "unknown"):
            checks.append(Check("ok", f"interface {dev}", f"present, {state}"))
        else:
            checks.append(Check("warning", f"interface {dev}",
                                f"link is {state}: `ip link set {dev} up`"))  # fmt: skip
    fwd4 = _sysctl("net/ipv4/ip_forward")
    if fwd4 == "1":
        checks.append(Check("ok", "IPv4 forwarding", "net.ipv4.ip_forward = 1"))
    else:
        checks.append(Check("error", "IPv4 forwarding",
                            f"net.ipv4.ip_forward = {fwd4}: nothing is forwarded, so nothing "
                            "is in transit to block; `sysctl -w net.ipv4.ip_forward=1` "
                            "(and in /etc/sysctl.d/ to keep it)"))  # fmt: skip
    fwd6 = _sysctl("net/ipv6/conf/all/forwarding")
    if fwd6 == "1":
        checks.append(Check("ok", "IPv6 forwarding", "net.ipv6.conf.all.forwarding = 1"))
    else:
        checks.append(Check("warning", "IPv6 forwarding",
                            f"net.ipv6.conf.all.forwarding = {fwd6}: IPv6 is not "
                            "routed (`sysctl -w net.ipv6.conf.all.forwarding=1` if it "
                            "should be)"))  # fmt: skip
    rp_all = int(_sysctl("net/ipv4/conf/all/rp_filter") or 0)
    for dev in devices:
        value = _sysctl(f"net/ipv4/conf/{dev}/rp_filter")
        if value is None:
            continue
        effective = max(rp_all, int(value))
        if effective == 0:
            checks.append(Check("warning", f"rp_filter {dev}",
                                "0: packets with spoofed sources are forwarded; "
                                f"`sysctl -w net.ipv4.conf.{dev}.rp_filter=1` (strict) or 2 "
                                "(loose, for asymmetric routes); or drop them in XDP "
                                "before detection sees them, IPv6 too: "
                                "sniffer.capture.reverse_path_check: strict"))  # fmt: skip
        else:
            kind = "strict" if effective == 1 else "loose"
            checks.append(Check("ok", f"rp_filter {dev}", f"{effective} ({kind})"))
    for dev in devices:
        off = _offloads(dev)
        lro, gro = off.get("large-receive-offload"), off.get("generic-receive-offload")
        if lro:
            checks.append(Check("warning", f"offloads {dev}",
                                f"LRO is on: native XDP will not attach; `ethtool -K {dev} "
                                "lro off`"))  # fmt: skip
        if gro and xdp_mode != "native":
            checks.append(Check("warning", f"offloads {dev}",
                                "GRO is on: in generic XDP mode merged super-frames are "
                                f"counted as one packet; `ethtool -K {dev} gro off` (or "
                                "native mode)"))  # fmt: skip
        if off and not lro and not (gro and xdp_mode != "native"):
            checks.append(Check("ok", f"offloads {dev}", "LRO and GRO off"))
    return checks
