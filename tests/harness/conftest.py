"""Fixtures for the harness tests: real corpora, real prepared workspaces, prepare.py as a module.

`prepared_workspace` is what a user has after cloning and running `python prepare.py --source`
with the CPU preset: prepare.py, train.py, model.json, ground.json and the gitar package in a
directory, and a cache with shards and a trained tokenizer. It is built once per session
(the train.py tests run the real trainer in copies of it).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gitar.config.schema import read_json_object
from gitar.demo.corpus import write_corpus
from gitar.demo.presets import cpu_ground, cpu_model

REPO_ROOT = Path(__file__).resolve().parents[2]
# Enough stdlib docstrings (~1 MB) for a 2048-token vocabulary and a visible learning curve,
# few enough that parsing them and preparing takes seconds.
SMALL_CORPUS_DOCS = 2500

_module_ids = itertools.count()


def clean_env() -> dict[str, str]:
    """The environment for a child prepare.py/train.py: no gitar variables leaking in from outside."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GITAR_")}


def make_workspace(root: Path, cache_dir: Path, **ground_overrides: dict[str, Any]) -> Path:
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
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=ws, env=clean_env(),
                          capture_output=True, text=True, timeout=300)


def import_prepare(ws: Path) -> ModuleType:
    """prepare.py of workspace ws as a fresh module (its constants come from ws/ground.json)."""
    spec = importlib.util.spec_from_file_location(f"prepare_under_test_{next(_module_ids)}", ws / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SMALL_CORPUS_DOCS documents of the embedded stdlib corpus, as parquet files."""
    directory = tmp_path_factory.mktemp("small-corpus")
    write_corpus(directory, max_docs=SMALL_CORPUS_DOCS)
    return directory


@pytest.fixture(scope="session")
def prepared_workspace(tmp_path_factory: pytest.TempPathFactory, small_corpus_dir: Path) -> Path:
    """A CPU-preset workspace, prepared once per session by the real `prepare.py --source`."""
    root = tmp_path_factory.mktemp("prepared")
    ws = make_workspace(root, root / "cache")
    result = run_prepare(ws, "--source", str(small_corpus_dir))
    if result.returncode != 0:
        pytest.fail(f"prepare.py --source failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return ws


@pytest.fixture(scope="session")
def prepare_module(prepared_workspace: Path) -> ModuleType:
    """prepare.py of the prepared workspace, imported once."""
    return import_prepare(prepared_workspace)


@pytest.fixture
def workspace_factory(tmp_path: Path) -> Callable[..., Path]:
    """Builds fresh, unprepared workspaces with their own cache under tmp_path."""
    counter = itertools.count()

    def build(**ground_overrides: dict[str, Any]) -> Path:
        root = tmp_path / f"ws{next(counter)}"
        return make_workspace(root, root / "cache", **ground_overrides)

    return build
