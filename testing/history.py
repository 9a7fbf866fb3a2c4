"""The small real history tests/review builds once per session (its conftest draws it): the helpers;
and a large synthetic one (synthesise_history) for the benchmarks and the tests of reading at scale."""

from __future__ import annotations

import json
import subprocess
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


def synthesise_history(ws: Workspace, n: int) -> None:
    """n prior attempts: every 10th kept (the branch advances), the rest discarded beside it."""
    branch = "refs/heads/autoresearch/t1"
    base = ws.git("rev-parse", branch).stdout.strip()
    lines: list[str] = []
    tip = base
    records: list[tuple[int, str]] = []
    when = 1_700_000_000
    for i in range(n):
        mark = i + 1
        keep = i % 10 == 0
        # An agent-owned file, as a real attempt changes: a commit touching anything else is rejected.
        body = (fake_train(1.0) + f"# attempt {i}\n").encode()
        msg = f"attempt {i}".encode()
        lines.append(f"commit refs/gitar/bench/{i % 2}")
        lines.append(f"mark :{mark}")
        lines.append(f"committer Bench <bench@example.com> {when + i} +0000")
        lines.append(f"data {len(msg)}")
        lines.append(msg.decode())
        lines.append(f"from {tip}" if tip != "" else "")
        lines.append(f"M 100644 inline train.py\ndata {len(body)}\n{body.decode()}")
        lines.append("")
        status = "keep" if keep else "discard"
        rec = {"status": status, "val_bpb": 1.0 - i * 1e-5, "description": f"attempt {i}",
               "commit": "", "branch": "autoresearch/t1", "kind": "attempt", "run_id": f"bench{i}",
               "schema": 1}
        records.append((mark, json.dumps(rec)))
        if keep:
            lines.append(f"reset {branch}\nfrom :{mark}\n")
            tip = f":{mark}"
    lines.append(f"commit refs/notes/gitar\ncommitter Bench <bench@example.com> {when} +0000\ndata 5\nbench")
    for m, rec in records:
        lines.append(f"N inline :{m}\ndata {len(rec.encode()) + 1}\n{rec}\n")
    lines.append("")
    lines.append("checkpoint\n")
    stream = "\n".join(lines)
    marks = ws.root / ".git" / "bench-marks"
    subprocess.run(["git", "fast-import", "--quiet", f"--export-marks={marks}"], cwd=ws.root,
                   input=stream.encode(), check=True)
    refs = []
    for line in marks.read_text().splitlines():
        _, sha = line.split()
        refs.append(f"create refs/gitar/attempts/{sha} {sha}")
    subprocess.run(["git", "update-ref", "--stdin"], cwd=ws.root, input="\n".join(refs) + "\n", text=True, check=True)
    subprocess.run(["git", "pack-refs", "--all"], cwd=ws.root, check=True)
    ws.git("reset", "-q", "--hard", "autoresearch/t1")
    for r in ("refs/gitar/bench/0", "refs/gitar/bench/1"):
        ws.git("update-ref", "-d", r)
    # Written behind gitar's back: adopted into its ledger as a user would adopt an old notebook.
    assert ws.gitar("verify", "--accept").returncode in (0, 1)
