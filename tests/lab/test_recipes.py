"""Recipes and scenarios load and validate; rendering and parameters are deterministic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from base.errors import LabError
from detector.families import FAMILIES
from lab.recipes import draw_params, load_recipes, render
from lab.scenario import load_datasets, load_scenarios
from lab.topology import load_topology

TOPO = load_topology()
RECIPES = load_recipes(TOPO)


def test_every_family_has_an_attack_and_every_recipe_has_evidence() -> None:
    attacks = [r for r in RECIPES.values() if r.is_attack]
    assert {r.family for r in attacks} == set(FAMILIES)
    assert sum(1 for r in RECIPES.values() if not r.is_attack) >= 6
    assert all(r.evidence for r in RECIPES.values())


def test_parameters_follow_the_seed() -> None:
    flood = RECIPES["syn_flood"]
    assert draw_params(flood, 1) == draw_params(flood, 1)
    draws = {tuple(draw_params(flood, s).items()) for s in range(20)}
    assert len(draws) > 1
    lo, hi = flood.params["count"]
    assert all(lo <= dict(d)["count"] <= hi for d in draws)


def test_render_fills_hosts_and_leaves_shell_variables(tmp_path: Path) -> None:
    recipe = replace(RECIPES["ping"], script="ping {server} ${HOME} $((1 + 2)) {count}")
    text = render(recipe, TOPO, {"count": 3}, tmp_path, 0)
    assert text == "ping 10.10.0.10 ${HOME} $((1 + 2)) 3"
    with pytest.raises(LabError, match="unknown placeholder"):
        render(replace(recipe, script="{nowhere}"), TOPO, {}, tmp_path, 0)


def test_bad_recipe_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("recipes:\n  x: {kind: attack, host: attacker, script: true, timeout_s: 1}\n")
    with pytest.raises(LabError, match="needs a family"):
        load_recipes(TOPO, path)
    path.write_text("recipes:\n  x: {kind: benign, host: mars, script: true, timeout_s: 1}\n")
    with pytest.raises(LabError, match="host 'mars'"):
        load_recipes(TOPO, path)


def test_scenarios_and_the_default_dataset_load() -> None:
    scenarios = load_scenarios(RECIPES)
    assert {"mixed", "benign", "smoke"} <= set(scenarios)
    default = load_datasets(scenarios)["default"]
    families = {RECIPES[a.recipe].family for name, _ in default for a in scenarios[name].attacks}
    assert families == set(FAMILIES)
    assert sum(scenarios[name].duration_s for name, _ in default) >= 20 * 60
