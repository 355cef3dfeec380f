#!/usr/bin/env python3
"""Control plane: how fast a config change reaches a service, and how fast registrations
follow a dead process and a restarted etcd.

Everything runs against a real etcd (Debian's etcd-server) started here on free ports
with a temporary data directory, removed at the end.

1. **Config propagation.** A ControlSession (the one every service runs) follows
   ``detector.thresholds.alert``; this process writes a new value and polls the session
   the way a service loop does (every 1 ms here) until the new value is in force: parsed,
   checked against the schema and the component's checks, status written back. Baseline
   in the same run: the same write seen by a bare etcd watch callback (no checks). p50 and
   p99 over ``--changes`` writes, and the ratio of the p50s.
2. **Dead process.** A child process registers with lease TTL ``--ttl`` and is killed with
   SIGKILL; the time until its key is gone from etcd (it cannot deregister: the lease must
   expire). Bounded by the TTL plus etcd's expiry check.
3. **Restarted etcd.** A registered session (with the shipped reconnection backoff); etcd
   is killed (SIGKILL), left down 1 s and started again on the same data; the time from
   launching etcd to the registration being back, against the baseline of etcd's own
   start (launch to its /health answering).

Last line: ``config_p50_ms=N config_p99_ms=N watch_p50_ms=N config_watch_ratio=N
kill_to_gone_s=N lease_ttl_s=N etcd_start_s=N etcd_restart_to_registered_s=N``.

    .venv/bin/python bench/control_plane.py            # 300 changes, 3 kills, 3 restarts
    .venv/bin/python bench/control_plane.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from config import load_config  # noqa: E402
from control import ControlConfig, EtcdClient, EtcdServer, ServiceControl  # noqa: E402

_CHILD = """
import dataclasses, sys, time
from config import load_config
from control import ControlConfig, ServiceControl
endpoint, ttl, state, pki = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = load_config()
cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, state_dir=state),
    control=ControlConfig(endpoints=(endpoint,), prefix="/bench", lease_ttl_s=ttl,
                          credentials_dir=pki))
plane = ServiceControl(cfg, component="detector", instance="victim")
plane.start()
plane.announce()
print("ready", flush=True)
time.sleep(3600)
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait(predicate: object, timeout_s: float, step_s: float = 0.005) -> float:
    """Seconds until ``predicate()`` holds (raises on timeout)."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("timed out")
        time.sleep(step_s)
    return time.monotonic() - start


def _plane(control: ControlConfig, state: Path) -> ServiceControl:
    cfg = load_config()
    cfg = dataclasses.replace(
        cfg, node=dataclasses.replace(cfg.node, state_dir=str(state)), control=control
    )
    return ServiceControl(
        cfg,
        component="detector",
        instance="bench",
        live_keys=("detector.thresholds",),
        validate=lambda c: c.detector.thresholds.check(),
    )


def config_propagation(
    control: ControlConfig, state: Path, changes: int
) -> tuple[list[float], list[float]]:
    etcd = EtcdClient.connect(control)
    key = f"{control.prefix}/config/detector/thresholds/alert"
    seen = threading.Event()
    cancel = etcd.watch_prefix(key, lambda events: seen.set())
    raw = []
    for i in range(changes):
        seen.clear()
        start = time.perf_counter()
        etcd.put(key, f"0.{10 + i % 80}")
        seen.wait(5)
        raw.append(time.perf_counter() - start)
    cancel()
    plane = _plane(control, state)
    plane.start()
    plane.announce()
    applied = []
    try:
        for i in range(changes):
            want = 0.1 + (i % 80) / 100 if i % 2 else 0.45
            start = time.perf_counter()
            etcd.put(key, str(want))

            def arrived(want: float = want) -> bool:
                state = plane.poll()
                got = None if state is None else state.config.detector.thresholds.alert
                return got is not None and abs(got - want) < 1e-9

            _wait(arrived, 5, 0.001)
            applied.append(time.perf_counter() - start)
    finally:
        plane.close()
        etcd.delete(key)
        etcd.close()
    return raw, applied


def kill_to_gone(endpoint: str, ttl: int, state: Path, trials: int, pki: str) -> list[float]:
    etcd = EtcdClient.connect(ControlConfig(endpoints=(endpoint,), credentials_dir=pki))
    key = "/bench/services/detector/victim"
    out = []
    try:
        for _ in range(trials):
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, endpoint, str(ttl), str(state), pki],
                stdout=subprocess.PIPE, text=True, cwd=_REPO,
                env=os.environ | {"PYTHONPATH": str(_REPO)},
            )  # fmt: skip
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
                _wait(lambda: etcd.get(key) is not None, 5)
                os.kill(child.pid, signal.SIGKILL)
                child.wait(5)
                out.append(_wait(lambda: etcd.get(key) is None, ttl + 10, 0.01))
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(5)
                if child.stdout is not None:
                    child.stdout.close()
    finally:
        etcd.close()
    return out


def _registered_after(control: ControlConfig, key: str) -> float:
    etcd = EtcdClient.connect(control)
    try:
        return _wait(lambda: etcd.get(key) is not None, 60, 0.01)
    finally:
        etcd.close()


def restart_to_registered(
    server: EtcdServer, control: ControlConfig, state: Path, trials: int
) -> list[tuple[float, float]]:
    """Per restart: (etcd launched -> it answers, etcd launched -> registered again)."""
    plane = _plane(control, state)
    plane.start()
    plane.announce()
    key = f"{control.prefix}/services/detector/bench"
    out = []
    try:
        for _ in range(trials):
            server.stop(kill=True)
            time.sleep(1.0)
            launched = time.monotonic()
            server.start()
            ready = time.monotonic() - launched
            out.append((ready, ready + _registered_after(control, key)))
    finally:
        plane.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=300, help="config writes timed")
    parser.add_argument("--kills", type=int, default=3, help="processes killed")
    parser.add_argument("--restarts", type=int, default=3, help="etcd restarts")
    parser.add_argument("--ttl", type=int, default=2, help="lease TTL of the killed process, s")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 changes, 1 each")
    args = parser.parse_args(argv)
    if args.quick:
        args.changes, args.kills, args.restarts = 30, 1, 1
    with tempfile.TemporaryDirectory(prefix="mld-bench-etcd-") as tmp:
        server = EtcdServer(Path(tmp) / "etcd").start()
        # The shipped reconnection backoff (0.5 s doubling up to 30 s), as services use it.
        # Authenticated (TLS client certificates) like the etcd mld starts.
        pki = str(server.pki_dir)
        control = ControlConfig(endpoints=(server.endpoint,), prefix="/bench", lease_ttl_s=args.ttl,
                                credentials_dir=pki)  # fmt: skip
        try:
            raw, applied = config_propagation(control, Path(tmp) / "s1", args.changes)
            p50, p99 = 1000 * statistics.median(applied), 1000 * _pct(applied, 0.99)
            print(
                f"config: {len(applied)} changes, applied p50 {p50:.2f} ms p99 {p99:.2f} ms; "
                f"bare watch p50 {1000 * statistics.median(raw):.2f} ms",
                flush=True,
            )
            gone = kill_to_gone(server.endpoint, args.ttl, Path(tmp) / "s2", args.kills, pki)
            shown = ", ".join(f"{g:.2f}" for g in gone)
            print(f"kill -9: registration gone after {shown} s (lease {args.ttl} s)", flush=True)
            back = restart_to_registered(server, control, Path(tmp) / "s3", args.restarts)
            shown = ", ".join(f"{r:.2f}/{b:.2f}" for r, b in back)
            print(f"etcd restart: answering/registered again {shown} s after launch", flush=True)
        finally:
            server.stop()
    p50 = statistics.median(applied)
    print(  # the one key=value line
        f"config_p50_ms={1000 * p50:.3f} config_p99_ms={1000 * _pct(applied, 0.99):.3f} "
        f"watch_p50_ms={1000 * statistics.median(raw):.3f} "
        f"config_watch_ratio={p50 / statistics.median(raw):.2f} "
        f"kill_to_gone_s={max(gone):.2f} lease_ttl_s={args.ttl} "
        f"etcd_start_s={max(r for r, _ in back):.2f} "
        f"etcd_restart_to_registered_s={max(b for _, b in back):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
