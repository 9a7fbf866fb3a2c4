"""The scale tests' lab: a bare remote and its clones (testing/lab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.lab import Lab, make_lab


@pytest.fixture
def lab(hermetic: Path, tmp_path: Path) -> Lab:
    """A bare remote seeded with a workspace on main (the fake trainer at val_bpb 1.0)."""
    return make_lab(tmp_path)
