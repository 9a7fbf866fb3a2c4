"""Workspaces with the real prepare.py and train.py: what a user has after `python prepare.py --source`.

make_prepared_workspace: the repository's prepare.py and train.py, the gitar package, the CPU
preset (tests/harness). build_workspace: a gitar workspace (git, hooks) from a prepared one, with
a private cache and a short budget (tests/integrity, tests/attacks).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from gitar.config.schema import read_json_object
from gitar.demo.presets import cpu_ground, cpu_model
from testing.hermetic import REPO_ROOT, env_without_gitar
from testing.workspace import Workspace, add_loop_files, init_repo

BUDGET_S = 3  # counted training seconds per real run: the model learns a little, the test stays short
# Enough stdlib docstrings (~1 MB) for a 2048-token vocabulary and a visible learning curve,
# few enough that parsing them and preparing takes seconds.
SMALL_CORPUS_DOCS = 2500

_module_ids = itertools.count()


def make_prepared_workspace(root: Path, cache_dir: Path, **ground_overrides: dict[str, Any]) -> Path:
    """A workspace under root: the repository's prepare.py (and train.py), the gitar package, the
    CPU-preset model.json, and ground.json = CPU preset with the cache at cache_dir, plus
    `section={key: value}` overrides."""
    ws = root / "workspace"
    ws.mkdir(parents=True)
    for name in ("prepare.py", "train.py"):
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, ws / name)
    shutil.copytree(REPO_ROOT / "gitar", ws / "gitar", ignore=shutil.ignore_patterns("__pycache__"))
    ground = cpu_ground(read_json_object(REPO_ROOT / "ground.json"))
    ground["data"]["cache_dir"] = str(cache_dir)
    for section, values in ground_overrides.items():
        ground[section].update(values)
    (ws / "ground.json").write_text(json.dumps(ground, indent=2) + "\n", encoding="utf-8")
    (ws / "model.json").write_text(json.dumps(cpu_model(), indent=2) + "\n", encoding="utf-8")
    return ws


def run_prepare(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=ws, env=env_without_gitar(),
                          capture_output=True, text=True, timeout=300)


def import_prepare(ws: Path) -> ModuleType:
    """prepare.py of workspace ws as a fresh module (its constants come from ws/ground.json)."""
    spec = importlib.util.spec_from_file_location(f"prepare_under_test_{next(_module_ids)}", ws / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_workspace(prepared: Path, root: Path) -> Workspace:
    """A gitar workspace from the prepared one: its prepare.py, train.py and model.json, a private
    copy of its cache, ground.json with the cache inside the workspace and a short budget."""
    root.mkdir(parents=True)
    ground = json.loads((prepared / "ground.json").read_text())
    shutil.copytree(Path(ground["data"]["cache_dir"]), root / "cache")
    ground["data"]["cache_dir"] = "cache"
    ground["training"]["time_budget_s"]["cpu"] = BUDGET_S
    # Ten excluded warm-up steps take a minute on two loaded cores: the allowance is not under test here.
    ground["training"]["allowance_s"]["cpu"] = 600
    ground["experiment"].update(timeout_s=240, smoke=False)
    (root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    for name in ("prepare.py", "train.py", "model.json"):
        shutil.copy(prepared / name, root / name)
    add_loop_files(root)
    return init_repo(root, {".gitignore": "cache/\n"})


def script_workspace(dest: Path, *, preset: bool) -> Path:
    """prepare.py, train.py, ground.json and model.json: the shipped ones or the CPU preset."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("prepare.py", "train.py", "ground.json", "model.json"):
        shutil.copy(REPO_ROOT / name, dest / name)
    if preset:
        ground = cpu_ground(json.loads((REPO_ROOT / "ground.json").read_text()))
        (dest / "ground.json").write_text(json.dumps(ground, indent=2))
        (dest / "model.json").write_text(json.dumps(cpu_model(), indent=2))
    return dest
