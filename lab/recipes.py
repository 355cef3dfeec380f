"""Traffic recipes (``lab/recipes.yaml``): load, render, run bounded, record ground truth.

A recipe runs one real tool inside one lab host's namespace as a bash script, in its own
process group, killed when its ``timeout_s`` passes. Every run returns a :class:`GroundTruth`:
which hosts, ports, protocol and time window the traffic was, and for attacks which family.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from base.errors import LabError
from detector.families import FAMILIES
from lab.evidence import Evidence, EvidenceCheck, parse_evidence
from lab.netns import exec_args
from lab.services import credentials
from lab.topology import Topology

__all__ = [
    "DEFAULT_RECIPES",
    "GroundTruth",
    "Recipe",
    "load_recipes",
    "run_recipe",
]

DEFAULT_RECIPES = Path(__file__).with_name("recipes.yaml")
PROTOS = ("tcp", "udp", "icmp", "*")
_PLACEHOLDER = re.compile(r"(?<!\$)\{([a-z][a-z0-9_]*)\}")
_KEYS = {
    "kind",
    "family",
    "label",
    "host",
    "targets",
    "ports",
    "proto",
    "spoofed",
    "timeout_s",
    "params",
    "script",
    "evidence",
}


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str
    host: str
    script: str
    timeout_s: float
    family: str | None = None
    label: str | None = None
    targets: tuple[str, ...] = ()
    ports: tuple[int, ...] | None = None  # None: any port
    proto: str = "*"
    spoofed: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    evidence: tuple[Evidence, ...] = ()

    @property
    def is_attack(self) -> bool:
        return self.kind == "attack"


@dataclass
class GroundTruth:
    """One recipe run: what the traffic was and when (wall-clock seconds, as pcaps use)."""

    recipe: str
    kind: str
    family: str | None
    label: str | None
    attack_hosts: list[str]  # the attack side's addresses; ["*"] when forged at random
    target_hosts: list[str]
    ports: list[int] | None
    proto: str
    start: float
    end: float
    seed: int
    params: dict[str, Any]
    exit_code: int | None
    timed_out: bool
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(src: Path, name: str, what: str) -> LabError:
    return LabError(f"{src}: recipe {name}: {what}")


def _parse(name: str, raw: dict[str, Any], topo: Topology, src: Path) -> Recipe:
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(src, name, f"unknown key(s) {', '.join(unknown)}")
    kind = raw.get("kind")
    if kind not in ("benign", "attack"):
        raise _fail(src, name, "kind must be benign or attack")
    host = raw.get("host")
    if host not in topo.hosts:
        raise _fail(src, name, f"host {host!r} is not in the topology ({', '.join(topo.hosts)})")
    family = raw.get("family")
    if kind == "attack" and family not in FAMILIES:
        raise _fail(src, name, f"an attack needs a family, one of {', '.join(FAMILIES)}")
    targets = tuple(raw.get("targets") or ())
    for t in targets:
        if t != "inside" and t not in topo.hosts:
            raise _fail(src, name, f"target {t!r} is not a host or 'inside'")
    ports_raw = raw.get("ports", "*")
    ports = None if ports_raw == "*" else tuple(int(p) for p in ports_raw)
    proto = str(raw.get("proto", "*"))
    if proto not in PROTOS:
        raise _fail(src, name, f"proto must be one of {', '.join(PROTOS)}")
    spoofed = raw.get("spoofed")
    if spoofed is not None and spoofed != "random" and spoofed not in topo.hosts:
        raise _fail(src, name, f"spoofed must be a host or 'random', not {spoofed!r}")
    if "script" not in raw or "timeout_s" not in raw:
        raise _fail(src, name, "needs a script and a timeout_s")
    params = dict(raw.get("params") or {})
    for key, value in params.items():
        ok = isinstance(value, (int, float, str)) or (
            isinstance(value, list) and len(value) == 2 and value[0] <= value[1]
        )
        if not ok:
            raise _fail(src, name, f"param {key} must be a value or [lo, hi]")
    return Recipe(
        name=name,
        kind=kind,
        host=host,
        script=str(raw["script"]),
        timeout_s=float(raw["timeout_s"]),
        family=family,
        label=raw.get("label", name) if kind == "attack" else None,
        targets=targets,
        ports=ports,
        proto=proto,
        spoofed=spoofed,
        params=params,
        evidence=tuple(
            parse_evidence(e, f"{src}: recipe {name}") for e in raw.get("evidence") or ()
        ),
    )


def load_recipes(topo: Topology, path: str | Path | None = None) -> dict[str, Recipe]:
    src = Path(path) if path else DEFAULT_RECIPES
    try:
        raw = yaml.safe_load(src.read_text())
    except OSError as exc:
        raise LabError(f"cannot read recipes {src}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise LabError(f"{src} is not valid YAML: {exc}") from exc
    recipes = {
        name: _parse(name, spec, topo, src) for name, spec in (raw or {}).get("recipes", {}).items()
    }
    if not recipes:
        raise LabError(f"{src} defines no recipes")
    return recipes


def draw_params(recipe: Recipe, seed: int) -> dict[str, Any]:
    """Concrete parameter values: [lo, hi] ranges drawn from a RNG seeded by run and recipe."""
    rng = random.Random(f"{seed}:{recipe.name}")
    out: dict[str, Any] = {}
    for key, value in recipe.params.items():
        if isinstance(value, list):
            lo, hi = value
            out[key] = (
                rng.randint(lo, hi)
                if isinstance(lo, int) and isinstance(hi, int)
                else rng.uniform(lo, hi)
            )
        else:
            out[key] = value
    return out


def _values(topo: Topology, params: dict[str, Any], work: Path, seed: int) -> dict[str, str]:
    values: dict[str, str] = {k: str(v) for k, v in credentials().items()}
    for host in topo.hosts.values():
        values[host.name] = host.ipv4
        if host.ipv6:
            values[host.name + "6"] = host.ipv6
        for nic in host.nics:
            values[f"{host.name}_{nic.name}"] = str(nic.ipv4)
    values["inside_list"] = " ".join(topo.inside_hosts())
    values["work"] = str(work)
    values["seed"] = str(seed)
    values.update({k: str(v) for k, v in params.items()})
    return values


def render(recipe: Recipe, topo: Topology, params: dict[str, Any], work: Path, seed: int) -> str:
    values = _values(topo, params, work, seed)

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise LabError(f"recipe {recipe.name}: unknown placeholder {{{key}}}")
        return values[key]

    return _PLACEHOLDER.sub(sub, recipe.script)


def _resolve(topo: Topology, names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for name in names:
        out.extend(topo.inside_hosts() if name == "inside" else [topo.host(name).ipv4])
    return out


def _attack_hosts(recipe: Recipe, topo: Topology) -> list[str]:
    if recipe.spoofed == "random":
        return ["*"]
    host = topo.host(recipe.spoofed or recipe.host)
    return [host.ipv4] + ([host.ipv6] if host.ipv6 else [])


def run_recipe(
    recipe: Recipe,
    topo: Topology,
    run_dir: Path,
    seed: int = 0,
    timeout_s: float | None = None,
    output: Path | None = None,
) -> GroundTruth:
    """Run ``recipe`` once inside its host's namespace and return its ground truth.

    The script's process group is killed at the timeout (the recipe's, or a smaller one
    given here). Evidence (counters and service logs) is read before and after.
    """
    ns = topo.namespace(recipe.host)
    params = draw_params(recipe, seed)
    limit = min(recipe.timeout_s, timeout_s) if timeout_s else recipe.timeout_s
    checks = [EvidenceCheck(e, topo, run_dir, params) for e in recipe.evidence]
    work = Path(tempfile.mkdtemp(prefix=f"recipe-{recipe.name}-", dir=run_dir))
    try:
        script = render(recipe, topo, params, work, seed)
        for check in checks:
            check.before()
        start = time.time()
        with open(output or os.devnull, "ab") as sink:
            proc = subprocess.Popen(
                exec_args(ns, ["bash", "-c", script]),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=work,
            )
            timed_out = False
            try:
                code: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                code = proc.returncode
        end = time.time()
        evidence = [check.after() for check in checks]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GroundTruth(
        recipe=recipe.name,
        kind=recipe.kind,
        family=recipe.family,
        label=recipe.label,
        attack_hosts=_attack_hosts(recipe, topo)
        if recipe.is_attack
        else [topo.host(recipe.host).ipv4],
        target_hosts=_resolve(topo, recipe.targets),
        ports=list(recipe.ports) if recipe.ports is not None else None,
        proto=recipe.proto,
        start=start,
        end=end,
        seed=seed,
        params=params,
        exit_code=code,
        timed_out=timed_out,
        evidence=evidence,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
