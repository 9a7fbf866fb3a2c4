"""The smoke step's refusals: noted in the notebook without touching what the agent works with, and placed.

A change the smoke step refuses leaves the branch, git's index and the work tree exactly as
they were (tests/core/test_refusals.py), and is recorded `rejected` (kind smoke) on a commit
made only to hold it, so `gitar log` and `gitar memory` show the idea. The refusal line names
the innermost frame of the agent's code that failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitar.loop.preflight import NO_DESCRIPTION, failing_frame
from testing.workspace import Workspace, make_workspace

REFUSED = 2
AGENT = ("train.py", "model.json")

# Fails inside a function of train.py, below it in the standard library (json), above it in <module>.
NESTED_FAILURE = '''\
import json, os, sys
def build():
    return layer()
def layer():
    return json.loads("{not json")
if os.environ.get("GITAR_SMOKE") == "1":
    build()
print("smoke: ok")
'''
FAILING_LINE = 5


def _index_and_tree(ws: Workspace) -> tuple[str, str, dict[str, bytes]]:
    files = {p: (ws.root / p).read_bytes() for p in AGENT}
    return ws.git("ls-files", "--stage").stdout, ws.tip(), files


def _refused_records(ws: Workspace) -> list[dict[str, object]]:
    return [r for r in ws.all_records() if r.get("kind") == "smoke"]


@pytest.mark.parametrize("through_hooks", [False, True], ids=["in-process", "through-hooks"])
def test_a_smoke_refusal_is_noted_and_changes_nothing_the_agent_works_with(
        hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through_hooks: bool) -> None:
    ws = make_workspace(tmp_path / "ws")
    if through_hooks:
        ws.add_user_hook()  # the commit goes through the pre-commit framework: the hook notes it
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    ws.write_train(0.5, mode="smoke-fail")
    before = _index_and_tree(ws)
    branches = ws.git("for-each-ref", "refs/heads").stdout
    proc = ws.gitar("try", "shape bug", "--hypothesis", "wider is better")
    assert proc.returncode == REFUSED, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "smoke step failed: train.py:8 in <module>: ValueError: mat1" in line
    assert _index_and_tree(ws) == before and ws.git("for-each-ref", "refs/heads").stdout == branches

    [record] = _refused_records(ws)
    sha = str(record["commit"])
    assert f"; noted as rejected {sha[:7]} (`gitar log`; never on the branch)" in line
    assert record["status"] == "rejected" and record["description"] == "shape bug"
    assert record["hypothesis"] == "wider is better" and record["parent"] == ws.tip()
    assert str(record["reason"]).startswith("smoke step failed: train.py:8 in <module>: ValueError: mat1")
    assert "val_bpb" not in record and "wall_seconds" not in record and record["agent_sha256"]
    # Held by its pin only: the refused train.py is in it, no branch contains it.
    assert ws.git("rev-parse", f"refs/gitar/attempts/{sha}").stdout.strip() == sha
    assert "smoke-fail" in ws.git("show", f"{sha}:train.py").stdout
    assert ws.git("branch", "--contains", sha).stdout.strip() == ""
    # Shown where ideas are reviewed; never a row of results.tsv, which lists what ran.
    log = ws.gitar("log").stdout
    assert f"{sha[:7]}  rejected" in log and "shape bug — smoke step failed: train.py:8 in <module>" in log
    assert sha[:7] not in ws.gitar("log", "--tsv").stdout
    memory = ws.gitar("memory").stdout
    assert "refused by the smoke step (1;" in memory and "1 rejected (never ran; 1 by the smoke step)" in memory
    assert f'{sha[:7]} "shape bug": train.py:8 in <module>: ValueError: mat1' in memory
    assert "shapes cannot be multiplied" in ws.gitar("show", sha[:7]).stdout  # its log, kept
    # The line is gitar's own, in the ledger: nothing for verify to accept, and the loop goes on.
    assert "accepted: nothing" in ws.gitar("verify", "--accept").stdout
    ws.write_train(0.5)
    assert ws.gitar("try", "the fixed idea").returncode == 0


def test_a_plain_commit_refused_by_the_smoke_step_is_noted_too(hermetic: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    head = ws.tip()
    ws.write_train(0.5, mode="smoke-fail")
    ws.git("add", "train.py")
    staged = ws.git("ls-files", "--stage").stdout
    proc = ws.git("commit", "-m", "plain shape bug", check=False)
    assert proc.returncode != 0 and "noted as rejected" in proc.stdout + proc.stderr
    assert ws.tip() == head and ws.git("ls-files", "--stage").stdout == staged  # still staged, as the agent left it
    [record] = _refused_records(ws)
    assert record["description"] == NO_DESCRIPTION and record["branch"] == "autoresearch/t1"


def test_the_refusal_names_the_innermost_frame_of_train_py(hermetic: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    (ws.root / "train.py").write_text(NESTED_FAILURE)
    proc = ws.gitar("try", "a layer that parses")
    assert proc.returncode == REFUSED
    # The cause is the launcher's crash record (type by class name, as every crash record spells it).
    assert f"gitar: error: smoke step failed: train.py:{FAILING_LINE} in layer: JSONDecodeError: " \
           "Expecting property name enclosed in double quotes" in proc.stderr, proc.stderr


def _frame(path: str, line: int, func: str) -> str:
    return f'  File "{path}", line {line}, in {func}\n    code\n'


def test_failing_frame_skips_foreign_frames_and_takes_the_last_exception(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    tb = "Traceback (most recent call last):\n"
    torch = "/usr/lib/python3/site-packages/torch/nn/modules/module.py"
    first = tb + _frame(f"{root}/train.py", 10, "<module>") + _frame(f"{root}/train.py", 50, "old") + "KeyError: x\n"
    last = (tb + _frame(f"{root}/train.py", 10, "<module>") + _frame(f"{root}/train.py", 77, "forward")
            + _frame(torch, 1500, "_call_impl") + _frame(f"{root}/prepare.py", 3, "evaluate")
            + _frame("/elsewhere/train.py", 1, "not_this_copy") + "RuntimeError: shapes\n")
    text = first + "\nDuring handling of the above exception, another exception occurred:\n\n" + last
    assert failing_frame(text, root, AGENT) == "train.py:77 in forward"
    # A module of the agent's own (agent_owned "models/"), a relative path, no traceback at all.
    agent = ("train.py", "models/")
    assert failing_frame(tb + _frame(f"{root}/train.py", 4, "<module>") + _frame(f"{root}/models/mlp.py", 9, "fwd"),
                         root, agent) == "models/mlp.py:9 in fwd"
    assert failing_frame(tb + _frame("train.py", 12, "step"), root, AGENT) == "train.py:12 in step"
    assert failing_frame("just a line\nValueError: no traceback", root, AGENT) is None
    # The header cut off (a crash record keeps only the last lines): the frames still count.
    assert failing_frame(_frame(f"{root}/train.py", 8, "main") + "ValueError: v", root, AGENT) == "train.py:8 in main"


def test_a_hostile_frame_name_stays_one_escaped_line(hermetic: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    # train.py prints its own "traceback": a frame whose function name carries a terminal escape.
    fake = ('import os, sys\nif os.environ.get("GITAR_SMOKE") == "1":\n'
            '    print("Traceback (most recent call last):\\n  File \\"{}/train.py\\", line 3, in evil\\x1b[2J"'
            '.format(os.getcwd()), file=sys.stderr)\n'
            '    print("ValueError: boom", file=sys.stderr)\n    sys.exit(1)\n')
    (ws.root / "train.py").write_text(fake)
    proc = ws.gitar("try", "escape")
    assert proc.returncode == REFUSED
    assert "\x1b" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "smoke step failed: train.py:3 in evil\\x1b[2J: ValueError: boom" in proc.stderr, proc.stderr
    assert "\x1b" not in str(_refused_records(ws)[0]["reason"])


# A crash record too big to be one (the runner reads at most 1 MiB of it): train.py wrote it, and
# gitar's memory is not its to fill. Read unbounded, it would name the forged cause.
OVERSIZED_CRASH_RECORD = '''\
import json, os
if os.environ.get("GITAR_SMOKE") == "1":
    with open(os.environ["GITAR_CRASH_FILE"], "w") as f:
        json.dump({"type": "Forged", "message": "from a record of 2 MiB", "pad": "x" * (2 << 20)}, f)
    print("the last line train.py printed", flush=True)
    os._exit(1)
print("smoke: ok")
'''


def test_an_oversized_crash_record_of_the_smoke_step_is_not_read(hermetic: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    (ws.root / "train.py").write_text(OVERSIZED_CRASH_RECORD)
    proc = ws.gitar("try", "a huge crash record")
    assert proc.returncode == REFUSED, proc.stdout + proc.stderr
    assert "smoke step failed: the last line train.py printed" in proc.stderr, proc.stderr
    assert "Forged" not in proc.stderr
