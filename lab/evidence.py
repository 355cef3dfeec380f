"""Evidence that a recipe's traffic arrived: counter deltas and new service-log lines.

- ``{host: server, counter: TcpInSegs, min: 5000}``: the delta of an ``nstat`` counter in
  the host's namespace (counters are per namespace) over the recipe's run.
- ``{log: sshd.log, pattern: 'Failed password', min: 30}``: lines added to a log in the
  lab's ``logs/`` folder during the run that match a regular expression.

``min`` is a number or ``PARAM*FACTOR`` (``count*0.5``): a share of a recipe parameter, so
evidence scales when a run fixes a smaller count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import LabError
from lab.netns import run_in
from lab.topology import Topology

__all__ = ["Evidence", "EvidenceCheck", "nstat", "parse_evidence"]


_SCALED = re.compile(r"^([a-z_][a-z0-9_]*)\s*\*\s*([0-9.]+)$")


@dataclass(frozen=True)
class Evidence:
    minimum: int | str
    host: str | None = None
    counter: str | None = None
    log: str | None = None
    pattern: str | None = None

    def threshold(self, params: dict[str, Any]) -> int:
        if isinstance(self.minimum, int):
            return self.minimum
        m = _SCALED.match(self.minimum)
        assert m is not None  # checked by parse_evidence
        if m.group(1) not in params:
            raise LabError(f"evidence min {self.minimum!r} names no parameter of the recipe")
        return int(float(params[m.group(1)]) * float(m.group(2)))

    def describe(self, minimum: int) -> str:
        if self.counter:
            return f"{self.counter} on {self.host} grew by >= {minimum}"
        return f"{self.log} gained >= {minimum} lines matching /{self.pattern}/"


def parse_evidence(raw: dict[str, Any], where: str) -> Evidence:
    if not isinstance(raw, dict) or "min" not in raw:
        raise LabError(f"{where}: evidence needs 'min' and a counter or a log")
    minimum = raw["min"]
    if not isinstance(minimum, int) and not (isinstance(minimum, str) and _SCALED.match(minimum)):
        raise LabError(f"{where}: evidence min must be a number or PARAM*FACTOR, not {minimum!r}")
    if "counter" in raw and "host" in raw and set(raw) <= {"counter", "host", "min"}:
        return Evidence(minimum=minimum, host=raw["host"], counter=raw["counter"])
    if "log" in raw and "pattern" in raw and set(raw) <= {"log", "pattern", "min"}:
        try:
            re.compile(raw["pattern"])
        except re.error as exc:
            raise LabError(f"{where}: bad evidence pattern {raw['pattern']!r}: {exc}") from exc
        return Evidence(minimum=minimum, log=raw["log"], pattern=raw["pattern"])
    raise LabError(f"{where}: evidence is {{host, counter, min}} or {{log, pattern, min}}: {raw}")


def nstat(topo: Topology, host: str) -> dict[str, int]:
    """Absolute SNMP/netstat counters of a host's namespace (history untouched)."""
    out = run_in(topo.namespace(host), "nstat", "-asz", "--json").stdout
    data = json.loads(out)
    counters: dict[str, int] = {}
    for group in data.values():
        counters.update({k: int(v) for k, v in group.items()})
    return counters


class EvidenceCheck:
    """Measure one piece of evidence around a run: ``before()``, run, ``after()``."""

    def __init__(
        self, evidence: Evidence, topo: Topology, run_dir: Path, params: dict[str, Any]
    ) -> None:
        self.evidence = evidence
        self.minimum = evidence.threshold(params)
        self.topo = topo
        self.path = run_dir / "logs" / evidence.log if evidence.log else None
        self._start = 0

    def _measure(self) -> int:
        ev = self.evidence
        if ev.counter:
            assert ev.host is not None
            return nstat(self.topo, ev.host).get(ev.counter, 0)
        assert self.path is not None
        return self.path.stat().st_size if self.path.exists() else 0

    def before(self) -> None:
        self._start = self._measure()

    def after(self) -> dict[str, Any]:
        ev = self.evidence
        if ev.counter:
            seen = self._measure() - self._start
        else:
            assert self.path is not None and ev.pattern is not None
            seen = 0
            if self.path.exists():
                with open(self.path, "rb") as f:
                    f.seek(self._start)
                    text = f.read().decode(errors="replace")
                rx = re.compile(ev.pattern)
                seen = sum(1 for line in text.splitlines() if rx.search(line))
        ok = seen >= self.minimum
        return {"check": ev.describe(self.minimum), "seen": seen, "min": self.minimum, "ok": ok}
