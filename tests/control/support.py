"""Helpers of the control-plane tests: configs pointing at the test's etcd and prefix."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from config import MldConfig, load_config
from control import ControlConfig, EtcdClient, EtcdServer
from tests.support import REPO


def control_config(server: EtcdServer, prefix: str, **changes: Any) -> ControlConfig:
    values: dict[str, Any] = {
        "endpoints": (server.endpoint,),
        "prefix": prefix,
        "lease_ttl_s": 2,
        "health_interval_s": 0.5,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
    }
    return ControlConfig(**(values | changes))


def mld_config(server: EtcdServer, prefix: str, state_dir: Path, **changes: Any) -> MldConfig:
    cfg = load_config()
    return dataclasses.replace(
        cfg,
        node=dataclasses.replace(cfg.node, state_dir=str(state_dir)),
        control=control_config(server, prefix, **changes),
    )


def client(server: EtcdServer) -> EtcdClient:
    return EtcdClient.connect(ControlConfig(endpoints=(server.endpoint,)))


def read_json(etcd: EtcdClient, key: str) -> Any:
    raw = etcd.get(key)
    return None if raw is None else json.loads(raw)


def spawn_mld(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``mld ARGS`` as a child process, its output appended to ``log``."""
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "mld.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (the clean stop), SIGKILL if it takes over 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
