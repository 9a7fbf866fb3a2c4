"""ground.json's keep-rule keys: shipped defaults, and one clear line for every bad value."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gitar.config.schema import load_ground, parse_ground
from gitar.errors import GitarError
from gitar.loop.judge import Policy
from testing.hermetic import REPO_ROOT

SHIPPED: dict[str, Any] = json.loads((REPO_ROOT / "ground.json").read_text())


def _parse(**experiment: Any) -> Any:
    obj = copy.deepcopy(SHIPPED)
    obj["experiment"].update(experiment)
    return parse_ground(obj, Path("ground.json")).experiment


def _error(obj: dict[str, Any]) -> str:
    with pytest.raises(GitarError) as e:
        parse_ground(obj, Path("ground.json"))
    message = e.value.message
    assert "\n" not in message
    return message


def test_shipped_policy_is_strict_with_usable_parameters() -> None:
    e = load_ground(REPO_ROOT / "ground.json").experiment
    assert e.keep_rule == "strict"  # autoresearch's rule stays the default
    assert e.margin_k > 0 and e.confirm_runs >= 1 and e.noise_floor > 0
    assert Policy.of(e) == Policy("strict", e.margin_k, e.confirm_runs, e.noise_floor)


@pytest.mark.parametrize("rule", ["strict", "margin", "confirm"])
def test_each_rule_is_accepted(rule: str) -> None:
    e = _parse(keep_rule=rule, margin_k=1.5, confirm_runs=3, noise_floor=0)
    assert (e.keep_rule, e.margin_k, e.confirm_runs, e.noise_floor) == (rule, 1.5, 3, 0.0)
    assert isinstance(e.margin_k, float) and isinstance(e.noise_floor, float)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("keep_rule", "lenient", "experiment.keep_rule: must be one of strict, margin, confirm"),
    ("keep_rule", 1, "experiment.keep_rule: must be one of"),
    ("margin_k", 0, "experiment.margin_k: must be greater than 0"),
    ("margin_k", -1, "experiment.margin_k: must be greater than 0"),
    ("margin_k", 11, "experiment.margin_k: must be at most 10"),
    ("margin_k", "2", "experiment.margin_k: expected a finite number"),
    ("margin_k", True, "experiment.margin_k: expected a finite number"),
    ("confirm_runs", 0, "experiment.confirm_runs: must be at least 1"),
    ("confirm_runs", 21, "experiment.confirm_runs: must be at most 20"),
    ("confirm_runs", 1.5, "experiment.confirm_runs: expected an integer"),
    ("confirm_runs", True, "experiment.confirm_runs: expected an integer"),
    ("noise_floor", -0.001, "experiment.noise_floor: must be at least 0"),
    ("noise_floor", 2, "experiment.noise_floor: must be at most 1"),
    ("noise_floor", None, "experiment.noise_floor: expected a finite number"),
])
def test_bad_values_are_one_line_naming_the_key(key: str, value: Any, expected: str) -> None:
    obj = copy.deepcopy(SHIPPED)
    obj["experiment"][key] = value
    message = _error(obj)
    assert message.startswith("ground.json: ") and expected in message


@pytest.mark.parametrize("key", ["margin_k", "confirm_runs", "noise_floor"])
def test_a_missing_key_is_named(key: str) -> None:
    obj = copy.deepcopy(SHIPPED)
    del obj["experiment"][key]
    assert f"missing key experiment.{key}" in _error(obj)


def test_unknown_and_misspelt_keys_are_refused() -> None:
    obj = copy.deepcopy(SHIPPED)
    obj["experiment"]["margin"] = 2
    assert "experiment.margin: unknown key" in _error(obj)
    obj = copy.deepcopy(SHIPPED)
    obj["experiment"]["confirm_run"] = obj["experiment"].pop("confirm_runs")
    message = _error(obj)
    assert "experiment.confirm_run" in message and '"confirm_runs"' in message
