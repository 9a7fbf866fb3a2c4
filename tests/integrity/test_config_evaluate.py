"""ground.json experiment.evaluate: optional (pinned workspaces predate it), "harness" by default."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gitar.config.schema import parse_ground
from gitar.errors import GitarError
from testing.hermetic import REPO_ROOT

SHIPPED: dict[str, Any] = json.loads((REPO_ROOT / "ground.json").read_text())


def with_evaluate(value: object) -> dict[str, Any]:
    obj = copy.deepcopy(SHIPPED)
    if value is None:
        del obj["experiment"]["evaluate"]
    else:
        obj["experiment"]["evaluate"] = value
    return obj


def test_shipped_ground_json_evaluates_with_the_harness() -> None:
    assert SHIPPED["experiment"]["evaluate"] == "harness"
    assert parse_ground(SHIPPED, Path("ground.json")).experiment.evaluate == "harness"


def test_a_ground_json_without_the_key_evaluates_with_the_harness() -> None:
    assert parse_ground(with_evaluate(None), Path("ground.json")).experiment.evaluate == "harness"


def test_reported_is_accepted() -> None:
    assert parse_ground(with_evaluate("reported"), Path("ground.json")).experiment.evaluate == "reported"


@pytest.mark.parametrize("value", ["train.py", True, ""])
def test_anything_else_is_one_line(value: object) -> None:
    with pytest.raises(GitarError) as e:
        parse_ground(with_evaluate(value), Path("ground.json"))
    assert e.value.message.startswith("ground.json: experiment.evaluate: must be one of harness, reported; got ")
