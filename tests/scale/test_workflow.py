"""The GitHub workflow runs the script these tests run, with credentials only where it pushes."""

from __future__ import annotations

from typing import Any

import yaml

from testing.hermetic import REPO_ROOT
from testing.lab import JOB_SCRIPT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "gitar.yml"


def _workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def test_only_pushes_to_experiment_branches_trigger_it() -> None:
    data = _workflow()
    triggers = data[True]  # YAML 1.1 reads the key `on` as a boolean
    assert set(triggers) == {"push"}
    assert triggers["push"]["branches"] == ["autoresearch/**"]
    assert data["concurrency"]["cancel-in-progress"] is False
    assert data["permissions"] == {}


def test_steps_are_the_tested_script_and_only_sync_steps_hold_the_token() -> None:
    job = _workflow()["jobs"]["measure"]
    assert job["runs-on"] == ["self-hosted", "gpu"] and job["timeout-minutes"] > 0
    script_steps = [s for s in job["steps"] if JOB_SCRIPT.name in s.get("run", "")]
    assert [s["run"].split()[-1] for s in script_steps] == ["fetch", "measure", "push"]
    for step in script_steps:
        has_token = "GITAR_GIT_TOKEN" in step.get("env", {})
        assert has_token == (not step["run"].endswith("measure")), step["name"]
    for step in job["steps"]:
        assert "${{" not in step.get("run", ""), f"{step['name']}: use env, not an expression in run"
        if "uses" in step:
            ref = step["uses"].split("@", 1)[1]
            assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), step["uses"]
            if "actions/checkout" in step["uses"]:
                assert step["with"]["persist-credentials"] is False
