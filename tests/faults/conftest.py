"""The fault suite's fixture: the workspace of testing/faults.py, its baseline measured once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.faults import FaultWorkspace, make_fault_workspace
from testing.hermetic import apply_hermetic


@pytest.fixture(scope="session")
def fault_template(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> FaultWorkspace:
    """One workspace with its baseline measured, built once per session in a hermetic environment."""
    root = tmp_path_factory.mktemp("fault-template")
    with pytest.MonkeyPatch.context() as mp:
        apply_hermetic(mp, root / "home", pre_commit_home)
        return make_fault_workspace(root / "ws")
