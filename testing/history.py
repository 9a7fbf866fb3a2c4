"""The small real history tests/review builds once per session (its conftest draws it): the helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass

from testing.trainers import fake_train
from testing.workspace import Workspace

CRASH_DESCRIPTION = '"double" width\tOOM\nsecond line'


def as_older_gitar_wrote(ws: Workspace, sha: str, description: str) -> None:
    """Put back into the commit's record a description that gitar refuses today."""
    note = ws.git("notes", "--ref", "refs/notes/gitar", "show", sha).stdout
    lines = [json.loads(line) for line in note.splitlines() if line.strip()]
    for record in lines:
        record["description"] = description
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    ws.git("notes", "--ref", "refs/notes/gitar", "add", "-f", "-m", text.rstrip("\n"), sha)


@dataclass(frozen=True)
class Built:
    ws: Workspace
    baseline: str
    wider: str
    lr04: str
    lr05: str
    crash: str
    rotary: str


def seeded_train(val_bpb: float) -> str:
    source = fake_train(val_bpb)
    line = f"VAL_BPB = {val_bpb!r}\n"
    assert line in source
    return source.replace(line, f"VAL_BPB = {val_bpb!r} + (int(os.environ.get('GITAR_SEED', '42')) % 3) * 0.001\n")


def attempt(ws: Workspace, val_bpb: float, description: str, mode: str = "ok", hypothesis: str | None = None) -> str:
    ws.write_train(val_bpb, mode)
    args = ["try", description, "--json"] + (["--hypothesis", hypothesis] if hypothesis else [])
    proc = ws.gitar(*args)
    assert proc.returncode in (0, 1), proc.stderr
    return str(json.loads(proc.stdout)["commit"])
