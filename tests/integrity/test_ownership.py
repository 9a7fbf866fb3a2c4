"""A commit made past the hooks that changes files only the user may change is never measured."""

from __future__ import annotations

import pytest

from testing.workspace import Workspace


@pytest.mark.parametrize("path", ["program.md", "hooks/extra.sh", "notes.txt"])
def test_a_foreign_file_committed_past_the_hooks_is_rejected_untrained(workspace: Workspace, path: str) -> None:
    ws = workspace
    assert ws.gitar("run").returncode == 0
    best = ws.tip()
    (ws.root / path).write_text("changed by the agent\n")
    ws.write_train(0.1)  # it would be a great result
    ws.git("add", path, "train.py")
    ws.git("commit", "--no-verify", "-qm", f"sneak a change to {path} in")
    sneaky = ws.git("rev-parse", "HEAD@{1}").stdout.strip()  # the commit, before the branch moved back
    assert ws.git("rev-parse", f"refs/gitar/attempts/{sneaky}").stdout.strip() == sneaky
    [rec] = ws.records(sneaky)
    assert rec["status"] == "rejected" and path in rec["reason"] and "not agent-owned" in rec["reason"], rec
    assert rec.get("val_bpb") is None and rec.get("wall_seconds") is None  # never trained
    assert ws.tip() == best
