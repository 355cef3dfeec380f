"""Scenarios (``lab/scenarios.yaml``): benign background plus scheduled attacks, captured
on the gateway and written out as a pcap, a labels file and the ground truth.

Output folder::

    capture.pcap    what the gateway's NIC saw (tcpdump, snaplen 256 by default)
    labels.csv      one ``window`` row per attack run (format: detector/labels.py)
    truth.jsonl     every recipe run, benign ones too, with parameters and evidence
    scenario.json   name, seed, interface, times, tcpdump counters, counts
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from base.errors import LabError
from detector.labels import LabelRow, write_labels
from lab.capture import Capture
from lab.recipes import GroundTruth, Recipe, run_recipe
from lab.topology import Topology

__all__ = [
    "DEFAULT_SCENARIOS",
    "Scenario",
    "ScenarioTraffic",
    "load_datasets",
    "load_scenarios",
    "run_scenario",
]

log = logging.getLogger(__name__)

DEFAULT_SCENARIOS = Path(__file__).with_name("scenarios.yaml")


@dataclass(frozen=True)
class Attack:
    recipe: str
    earliest: float
    latest: float
    # Parameters fixed for this attack (the rest drawn from the recipe's ranges).
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    background: tuple[str, ...]
    attacks: tuple[Attack, ...]


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LabError(f"cannot read scenarios {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise LabError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise LabError(f"{path}: expected a mapping with 'scenarios'")
    return raw


def load_scenarios(recipes: dict[str, Recipe], path: Path | None = None) -> dict[str, Scenario]:
    src = path or DEFAULT_SCENARIOS
    out: dict[str, Scenario] = {}
    for name, raw in (_read(src).get("scenarios") or {}).items():
        where = f"{src}: scenario {name}"
        unknown = set(raw) - {"description", "duration_s", "background", "attacks"}
        if unknown:
            raise LabError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        background = tuple(raw.get("background") or ())
        attacks = []
        for a in raw.get("attacks") or ():
            lo, hi = a["at"] if isinstance(a.get("at"), list) else (a.get("at", 0), a.get("at", 0))
            fixed = a.get("params") or {}
            if not isinstance(fixed, dict):
                raise LabError(f"{where}: params of {a.get('recipe')} must be a mapping")
            attacks.append(Attack(a["recipe"], float(lo), float(hi), tuple(fixed.items())))
        duration = float(raw.get("duration_s", 0))
        if duration <= 0:
            raise LabError(f"{where}: duration_s must be positive")
        for r in background:
            if r not in recipes or recipes[r].is_attack:
                raise LabError(f"{where}: background {r!r} is not a benign recipe")
        for a in attacks:
            if a.recipe not in recipes or not recipes[a.recipe].is_attack:
                raise LabError(f"{where}: {a.recipe!r} is not an attack recipe")
            unknown_params = {k for k, _ in a.params} - set(recipes[a.recipe].params)
            if unknown_params:
                raise LabError(f"{where}: {a.recipe} has no parameter(s) "
                               f"{', '.join(sorted(unknown_params))}")  # fmt: skip
            if not 0 <= a.earliest <= a.latest < duration:
                raise LabError(f"{where}: {a.recipe} starts outside [0, {duration:g})")
        out[name] = Scenario(name, str(raw.get("description", "")), duration, background,
                             tuple(attacks))  # fmt: skip
    return out


def load_datasets(
    scenarios: dict[str, Scenario], path: Path | None = None
) -> dict[str, list[tuple[str, int]]]:
    src = path or DEFAULT_SCENARIOS
    out: dict[str, list[tuple[str, int]]] = {}
    for name, items in (_read(src).get("datasets") or {}).items():
        entries = []
        for item in items:
            if item.get("scenario") not in scenarios:
                raise LabError(f"{src}: dataset {name}: no scenario {item.get('scenario')!r}")
            entries.append((item["scenario"], int(item.get("seed", 0))))
        out[name] = entries
    return out


def label_row(truth: GroundTruth, pcap: str, all_lab_addresses: list[str]) -> LabelRow:
    forged = truth.attack_hosts == ["*"]
    return LabelRow(
        pcap=pcap,
        family=truth.family or "",
        attack_hosts=";".join(truth.attack_hosts),
        scope="window",
        notes=f"recipe {truth.recipe}, seed {truth.seed}, "
        f"params {json.dumps(truth.params, sort_keys=True)}",
        label=truth.label or "",
        target_hosts=";".join(truth.target_hosts) or "*",
        ports="*" if truth.ports is None else ";".join(map(str, truth.ports)),
        proto=truth.proto,
        start=f"{truth.start:.6f}",
        end=f"{truth.end:.6f}",
        exclude_hosts=";".join(a for a in all_lab_addresses if a not in truth.target_hosts)
        if forged
        else "",
    )


class _Runner:
    """Threads for the background loops and the attacks, one lock per attacking host."""

    def __init__(self, scenario: Scenario, recipes: dict[str, Recipe], topo: Topology,
                 run_dir: Path, seed: int, t0: float, stop: threading.Event,
                 log_file: Path) -> None:  # fmt: skip
        self.scenario, self.recipes, self.topo, self.run_dir = scenario, recipes, topo, run_dir
        self.seed, self.t0, self.stop, self.log_file = seed, t0, stop, log_file
        self.truths: list[GroundTruth] = []
        self.errors: list[str] = []
        # (recipe, host, wall-clock start) of every attack as it starts.
        self.attacks_started: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        # One lock per attacking host: its attacks run one after another.
        self._host_locks = {recipes[a.recipe].host: threading.Lock() for a in scenario.attacks}

    def _record(self, truth: GroundTruth) -> None:
        with self._lock:
            self.truths.append(truth)

    def _remaining(self) -> float:
        return self.t0 + self.scenario.duration_s - time.time()

    def guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a failed recipe ends its thread, not the scenario
            log.error("%s failed: %s", what, exc)
            with self._lock:
                self.errors.append(f"{what}: {exc}")

    def background(self, index: int, name: str) -> None:
        recipe = self.recipes[name]
        rng = random.Random(f"{self.seed}:bg:{index}:{name}")
        self.stop.wait(rng.uniform(0, 5))
        run = 0
        while not self.stop.is_set() and self._remaining() > 2:
            truth = run_recipe(recipe, self.topo, self.run_dir, seed=rng.randrange(1 << 30),
                               timeout_s=max(self._remaining(), 1.0),
                               output=self.log_file)  # fmt: skip
            self._record(truth)
            run += 1
            self.stop.wait(rng.uniform(1, 8))

    def attack(self, index: int, attack: Attack) -> None:
        recipe = self.recipes[attack.recipe]
        if attack.params:
            recipe = replace(recipe, params={**recipe.params, **dict(attack.params)})
        rng = random.Random(f"{self.seed}:attack:{index}:{attack.recipe}")
        at = rng.uniform(attack.earliest, attack.latest)
        if self.stop.wait(max(0.0, self.t0 + at - time.time())):
            return
        with self._host_locks[recipe.host]:
            if self.stop.is_set() or self._remaining() < 2:
                return
            log.info(
                "attack %s from %s at +%.0f s", recipe.name, recipe.host, time.time() - self.t0
            )
            with self._lock:
                self.attacks_started.append((recipe.name, recipe.host, time.time()))
            truth = run_recipe(recipe, self.topo, self.run_dir, seed=rng.randrange(1 << 30),
                               timeout_s=self._remaining(), output=self.log_file)  # fmt: skip
            self._record(truth)


class ScenarioTraffic:
    """A scenario's traffic running in threads: background loops and scheduled attacks.

    :meth:`start`, then :meth:`tick` now and then (it ends the run at ``duration_s``) until
    :attr:`running` is false, or :meth:`stop` early; :attr:`truths` holds every finished
    recipe run, :attr:`attacks_started` every attack as it starts."""

    def __init__(self, scenario: Scenario, recipes: dict[str, Recipe], topo: Topology,
                 run_dir: Path, seed: int, log_file: Path) -> None:  # fmt: skip
        self.scenario = scenario
        self.stop_event = threading.Event()
        self.t0 = 0.0
        self._args = (scenario, recipes, topo, run_dir, seed)
        self._log_file = log_file
        self._runner: _Runner | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.t0 = time.time()
        scenario, recipes, topo, run_dir, seed = self._args
        runner = _Runner(scenario, recipes, topo, run_dir, seed, self.t0, self.stop_event,
                         self._log_file)  # fmt: skip
        self._runner = runner
        jobs: list[tuple[Any, ...]] = [
            (f"background {n}", runner.background, i, n) for i, n in enumerate(scenario.background)
        ]
        jobs += [
            (f"attack {a.recipe}", runner.attack, i, a) for i, a in enumerate(scenario.attacks)
        ]
        self._threads = [
            threading.Thread(target=runner.guarded, args=job, daemon=True) for job in jobs
        ]
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0 if self.t0 else 0.0

    def tick(self) -> None:
        if self._runner is not None and self._runner._remaining() <= 0:
            self.stop_event.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    @property
    def truths(self) -> list[GroundTruth]:
        return sorted(self._runner.truths if self._runner else [], key=lambda t: t.start)

    @property
    def attacks_started(self) -> list[tuple[str, str, float]]:
        return list(self._runner.attacks_started) if self._runner else []

    @property
    def errors(self) -> list[str]:
        return list(self._runner.errors) if self._runner else []


def run_scenario(
    scenario: Scenario,
    recipes: dict[str, Recipe],
    topo: Topology,
    run_dir: Path,
    out: Path,
    seed: int = 0,
    iface: tuple[str, str] = ("gateway", "outside"),
    snaplen: int = 256,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` while capturing on ``iface`` (host, NIC); write the output folder."""
    host, nic = iface
    topo.host(host).nic(nic)
    out.mkdir(parents=True, exist_ok=True)
    pcap = out / "capture.pcap"
    started = time.time()
    with Capture(topo.namespace(host), nic, pcap, snaplen) as capture:
        traffic = ScenarioTraffic(scenario, recipes, topo, run_dir, seed, out / "recipes.log")
        traffic.start()
        last = 0.0
        try:
            while traffic.running:
                traffic.tick()
                time.sleep(0.25)
                if progress and time.time() - last >= 10:
                    last = time.time()
                    done = sum(1 for tr in traffic.truths if tr.kind == "attack")
                    progress(f"{scenario.name}: {traffic.elapsed:4.0f}/"
                             f"{scenario.duration_s:.0f} s, "
                             f"{len(traffic.truths)} recipe runs, "
                             f"{done}/{len(scenario.attacks)} attacks done")  # fmt: skip
        finally:
            traffic.stop()
        time.sleep(0.5)  # let the last packets of the last runs reach the capture
    ended = time.time()
    truths = traffic.truths
    addresses = [str(a) for h in topo.hosts.values() for n in h.nics for a in n.addresses]
    rows = [label_row(t, pcap.name, addresses) for t in truths if t.kind == "attack"]
    write_labels(out / "labels.csv", rows)
    with open(out / "truth.jsonl", "w") as f:
        for t in truths:
            f.write(json.dumps(t.to_dict()) + "\n")
    failed = [
        f"{t.recipe}: {e['check']} saw {e['seen']}"
        for t in truths
        for e in t.evidence
        if not e["ok"]
    ]
    summary = {
        "scenario": scenario.name,
        "seed": seed,
        "iface": f"{host}/{nic}",
        "snaplen": snaplen,
        "started": started,
        "ended": ended,
        "duration_s": round(ended - started, 1),
        "recipe_runs": len(truths),
        "attack_runs": len(rows),
        "attacks_scheduled": len(scenario.attacks),
        "evidence_failed": failed,
        "errors": traffic.errors,
        "capture": capture.stats,
    }
    (out / "scenario.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
