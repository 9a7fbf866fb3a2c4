"""Fixtures for the harness tests: real corpora, real prepared workspaces, prepare.py as a module.

`prepared_workspace` (tests/conftest.py) is what a user has after cloning and running `python prepare.py --source`
with the CPU preset: prepare.py, train.py, model.json, ground.json and the gitar package in a
directory, and a cache with shards and a trained tokenizer. It is built once per session
(the train.py tests run the real trainer in copies of it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from testing.prepared import import_prepare, make_prepared_workspace


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
        return make_prepared_workspace(root, root / "cache", **ground_overrides)

    return build
