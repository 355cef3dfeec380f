"""Run several ML Defender services as child processes of one process, and keep them up.

A :class:`Supervisor` starts each :class:`ChildSpec` in its own session (so a Ctrl-C in the
terminal reaches the supervisor only, which then stops the children in a fixed order),
sends its output to ``<log_dir>/<name>.log``, and restarts a child that exits on its own,
waiting 1 s, then 2, 4 ... up to 30 s between attempts; a child that stayed up for a
minute starts again from 1 s. A child that exits more than ``crash_limit`` times within
``crash_window_s`` is a crash loop: :meth:`poll` raises :class:`GatewayError` with the end
of its log, and the caller stops everything.

:meth:`stop` sends SIGTERM to one child at a time, in the order the caller gives (default:
the reverse of start), waits its ``grace_s`` and SIGKILLs it if it is still there. The
PIDs are written to ``state_file`` after every change so other processes (``make
status-lab``, tests) can find them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from base.errors import GatewayError

__all__ = ["ChildSpec", "Supervisor", "read_state"]

log = logging.getLogger(__name__)

_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0


@dataclass(frozen=True)
class ChildSpec:
    """One service: its name (``sniffer``...), argv and extra environment."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    # Seconds SIGTERM is given before SIGKILL at stop (the sniffer flushes its flow table).
    grace_s: float = 15.0


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    exits: list[float] = field(default_factory=list)
    next_start: float = 0.0
    backoff_s: float = _BACKOFF_FIRST_S
    last_exit: int | None = None
    log_file: IO[bytes] | None = None


class Supervisor:
    """Starts, watches and stops a list of child processes (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        log_dir: Path,
        state_file: Path | None = None,
        *,
        crash_limit: int = 5,
        crash_window_s: float = 120.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise GatewayError(f"child names must be unique, got {names}")
        self.log_dir = log_dir
        self.state_file = state_file
        self.crash_limit = crash_limit
        self.crash_window_s = crash_window_s
        self.on_event = on_event or (lambda text: log.info("%s", text))
        self._children = {s.name: _Child(s) for s in specs}
        self._stopping = False

    # ---- start / watch --------------------------------------------------------------

    def start(self, name: str) -> int:
        """Start one child now; returns its PID."""
        child = self._children[name]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if child.log_file is None:
            child.log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open)
        child.log_file.write(
            f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: starting "
            f"{' '.join(child.spec.argv)}\n".encode()
        )
        child.log_file.flush()
        try:
            child.proc = subprocess.Popen(
                list(child.spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=child.log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **child.spec.env},
                start_new_session=True,
            )
        except OSError as exc:
            raise GatewayError(f"cannot start {name} ({child.spec.argv[0]}): {exc}") from exc
        child.started = time.monotonic()
        self._save()
        return child.proc.pid

    def start_all(self) -> None:
        for name in self._children:
            self.start(name)

    def pid(self, name: str) -> int | None:
        proc = self._children[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    @property
    def names(self) -> list[str]:
        return list(self._children)

    def poll(self) -> list[str]:
        """Reap children that exited and start again those whose wait is over.

        Returns the names restarted in this call; raises :class:`GatewayError` on a crash
        loop."""
        now = time.monotonic()
        restarted = []
        for name, child in self._children.items():
            if self._stopping:
                break
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                child.last_exit = proc.returncode
                child.proc = None
                up_s = now - child.started
                child.exits = [t for t in child.exits if now - t < self.crash_window_s] + [now]
                if up_s >= _STABLE_S:
                    child.backoff_s = _BACKOFF_FIRST_S
                child.next_start = now + child.backoff_s
                self.on_event(
                    f"{name} (pid {proc.pid}) exited with {_exit_text(proc.returncode)} after "
                    f"{up_s:.1f} s; restarting in {child.backoff_s:.0f} s"
                )
                child.backoff_s = min(child.backoff_s * 2, _BACKOFF_MAX_S)
                self._save()
                if len(child.exits) > self.crash_limit:
                    raise GatewayError(
                        f"{name} exited {len(child.exits)} times within "
                        f"{self.crash_window_s:.0f} s; last lines of "
                        f"{self.log_dir / (name + '.log')}:\n{self.tail(name)}"
                    )
            if child.proc is None and child.next_start and now >= child.next_start:
                child.next_start = 0.0
                child.restarts += 1
                pid = self.start(name)
                self.on_event(f"{name} restarted (pid {pid}, restart {child.restarts})")
                restarted.append(name)
        return restarted

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ---- stop ----------------------------------------------------------------------

    def stop(self, order: Sequence[str] | None = None) -> dict[str, int | None]:
        """SIGTERM each child in ``order`` (default: reverse start order), one at a time,
        waiting its grace, then SIGKILL. Returns each child's exit status."""
        self._stopping = True
        result: dict[str, int | None] = {}
        for name in order or list(reversed(self._children)):
            child = self._children[name]
            proc = child.proc
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=child.spec.grace_s)
                except subprocess.TimeoutExpired:
                    grace = child.spec.grace_s
                    log.warning("%s ignored SIGTERM for %.0f s; killing it", name, grace)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=10)
                result[name] = proc.returncode
                child.proc = None
            if child.log_file is not None:
                child.log_file.close()
                child.log_file = None
        self._save()
        return result

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "supervisor_pid": os.getpid(),
            "children": {
                name: {
                    "pid": c.proc.pid if c.proc is not None else None,
                    "restarts": c.restarts,
                    "last_exit": c.last_exit,
                    "argv": list(c.spec.argv),
                    "log": str(self.log_dir / f"{name}.log"),
                }
                for name, c in self._children.items()
            },
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state_file)


def read_state(state_file: Path) -> dict[str, Any] | None:
    """The state a supervisor wrote, or None."""
    try:
        data: dict[str, Any] = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return data


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
