"""Network-namespace plumbing for the lab: ``ip`` commands, run-in-namespace, cleanup.

Every call goes through :func:`run`, which raises :class:`LabError` with the command and
its stderr, so a failure says which step broke.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from base.errors import LabError

__all__ = [
    "delete_namespace",
    "enter_namespace",
    "exec_args",
    "kill_pids",
    "list_namespaces",
    "namespace_pids",
    "return_to_namespace",
    "run",
    "run_in",
    "xdp_attachments",
]

log = logging.getLogger(__name__)


def run(
    args: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"{args[0]} is not installed; run `make install`") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(args)}` did not finish within {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    return proc


def exec_args(ns: str, args: Sequence[str]) -> list[str]:
    """The argv that runs ``args`` inside namespace ``ns`` (``ip netns exec``)."""
    return ["ip", "netns", "exec", ns, *args]


def run_in(
    ns: str, *args: str, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return run(exec_args(ns, args), check=check, timeout=timeout)


def list_namespaces(prefix: str) -> list[str]:
    """Named namespaces whose name starts with ``prefix-``."""
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    names = [entry["name"] for entry in json.loads(out)] if out else []
    return sorted(n for n in names if n.startswith(prefix + "-"))


def namespace_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone; reap it.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False


def kill_pids(pids: Sequence[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns the PIDs that were running."""
    live = [p for p in pids if p > 1 and p != os.getpid() and _alive(p)]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in live):
        time.sleep(0.05)
    for pid in live:
        if _alive(pid):
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it", pid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return live


def delete_namespace(ns: str) -> list[int]:
    """Kill every process in ``ns``, then delete it (its veths and XDP programs go with it).

    Returns the PIDs that were running in it.
    """
    stopped = kill_pids(namespace_pids(ns))
    run(["ip", "netns", "del", ns], check=False)
    return stopped


_CLONE_NEWNET = 0x40000000


def enter_namespace(ns: str) -> int:
    """Move the calling thread into named network namespace ``ns``. Returns a descriptor
    of the namespace it was in, for :func:`return_to_namespace`.

    Only the network namespace changes (not the mount namespace, unlike ``ip netns exec``),
    so bpffs pins stay visible. Threads started afterwards by this thread, and child
    processes, are in ``ns`` too; call it before starting threads."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    previous = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.close(previous)
            raise LabError(f"cannot enter network namespace {ns}: {os.strerror(err)}")
    finally:
        os.close(target)
    return previous


def return_to_namespace(fd: int) -> None:
    """Go back to the namespace :func:`enter_namespace` returned (and close it)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise LabError(f"cannot return to the first network namespace: "
                           f"{os.strerror(ctypes.get_errno())}")  # fmt: skip
    finally:
        os.close(fd)


def xdp_attachments(ns: str | None = None) -> list[str]:
    """``dev:prog-id`` for every interface with an XDP program, in ``ns`` or the root."""
    args = ["ip", "-j", "link", "show"]
    out = run(exec_args(ns, args) if ns else args, check=False).stdout.strip()
    found = []
    for link in json.loads(out) if out else []:
        xdp = link.get("xdp")
        if xdp:
            # One program: {"prog": {"id": N}}; several modes at once: {"attached": [...]}.
            attached = xdp.get("attached") or [xdp]
            ids = ",".join(str(a.get("prog", {}).get("id", "?")) for a in attached)
            found.append(f"{link['ifname']}:{ids}")
    return found
