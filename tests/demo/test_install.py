"""What installing gitar asks of an environment: any recent torch, and the tested one on request."""

from __future__ import annotations

import re

import pytest

from testing.hermetic import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as development and CI use
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _torch(requirements: list[str]) -> list[str]:
    return [r for r in requirements if re.match(r"torch\b(?!vision|audio)", r)]


def test_installing_gitar_never_replaces_a_workspace_s_own_torch() -> None:
    """Upstream autoresearch pins torch 2.9.1 (with `kernels`): gitar's CLI must install beside it."""
    (torch,) = _torch(PROJECT["dependencies"])
    assert "==" not in torch and "<" not in torch, f"pyproject.toml pins torch for every user: {torch}"


def test_the_tested_torch_is_an_extra_the_readme_and_ci_install() -> None:
    assert _torch(PROJECT["optional-dependencies"]["torch"]) == ["torch==2.13.0"]
    assert "gitar[torch]" in PROJECT["optional-dependencies"]["dev"]
    first_two = (REPO_ROOT / "README.md").read_text().split("```")[1]
    assert "pip install -e '.[torch]' && .venv/bin/gitar demo" in first_two
    assert "pip install -e '.[dev]'" in first_two and "pip install -q -e '.[dev]'" in (REPO_ROOT / ".ci" / "run").read_text()
