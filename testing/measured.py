"""A measured workspace for the integrity tests: its baseline trained by the real train.py and
measured by gitar's harness evaluation; and the edits and tries the tests make in it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from testing.workspace import Workspace

BRANCH = "autoresearch/t1"


@dataclass(frozen=True)
class Measured:
    ws: Workspace
    baseline: str  # the commit the baseline measured
    record: dict[str, object]  # its record


def edit_train(ws: Workspace, *replacements: tuple[str, str]) -> None:
    """train.py with each (old, new) replaced once; fails if an old text is not there."""
    source = (ws.root / "train.py").read_text()
    for old, new in replacements:
        assert source.count(old) == 1, f"train.py no longer contains {old!r}"
        source = source.replace(old, new)
    (ws.root / "train.py").write_text(source)


def try_json(ws: Workspace, description: str, timeout: float = 300) -> dict[str, object]:
    proc = ws.gitar("try", description, "--json", timeout=timeout)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    record: dict[str, object] = json.loads(proc.stdout)
    return record
