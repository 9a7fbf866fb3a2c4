"""Everything `gitar try`, `init` and the pre-commit hook refuse: nothing is committed or run, edits stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testing.trainers import fake_train
from testing.workspace import Workspace, init_repo, make_workspace

REFUSED = 2


def _unchanged(ws: Workspace, head: str) -> None:
    assert ws.tip() == head, "a refused try must not move the branch"
    assert ws.all_records() == [] or all(r["commit"] != ws.tip() or r["kind"] != "attempt"
                                         for r in ws.all_records())


@pytest.fixture
def measured(workspace: Workspace) -> Workspace:
    assert workspace.gitar("run").returncode == 0
    return workspace


def test_not_a_repository(hermetic: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gitar", "try", "x"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == REFUSED
    assert "not inside a git repository" in proc.stderr and "Traceback" not in proc.stderr


def test_not_a_gitar_workspace(hermetic: Path, tmp_path: Path) -> None:
    init_repo(tmp_path / "r", {"f": "x"}, message="c")
    proc = subprocess.run([sys.executable, "-m", "gitar", "try", "x"], cwd=tmp_path / "r", capture_output=True, text=True)
    assert proc.returncode == REFUSED and "not a gitar workspace" in proc.stderr


def test_not_on_an_experiment_branch(workspace: Workspace) -> None:
    ws = workspace
    ws.git("switch", "-q", "main")
    ws.write_train(0.5)
    proc = ws.gitar("try", "on main")
    assert proc.returncode == REFUSED and "not an experiment branch" in proc.stderr
    assert ws.git("rev-list", "--count", "main").stdout.strip() == "1"


def test_detached_head(workspace: Workspace) -> None:
    ws = workspace
    ws.git("switch", "-q", "--detach", "HEAD")
    proc = ws.gitar("try", "detached")
    assert proc.returncode == REFUSED and "HEAD is detached" in proc.stderr


@pytest.mark.parametrize("desc", ["", "   ", "\n\n"])
def test_empty_description(measured: Workspace, desc: str) -> None:
    ws = measured
    head = ws.tip()
    ws.write_train(0.5)
    proc = ws.gitar("try", desc)
    assert proc.returncode == REFUSED and "the description is empty" in proc.stderr
    _unchanged(ws, head)
    assert (ws.root / "train.py").read_text() == fake_train(0.5)


def test_huge_description(measured: Workspace) -> None:
    ws = measured
    head = ws.tip()
    ws.write_train(0.5)
    proc = ws.gitar("try", "x" * 120_000)  # near the OS limit for one argument
    assert proc.returncode == REFUSED and "characters" in proc.stderr
    _unchanged(ws, head)


def test_description_with_shell_metacharacters_and_hash(measured: Workspace) -> None:
    ws = measured
    ws.write_train(0.5)
    # One line (a second one is refused: tests/badinput); a leading "#" must survive git's cleanup.
    desc = "#1 try $(rm -rf /) `whoami` ; && | 'quotes' \"dq\" — ünïcødé 中 🚀"
    proc = ws.gitar("try", desc)
    assert proc.returncode == 0, proc.stderr
    [rec] = ws.records(ws.tip())
    assert rec["description"] == desc
    assert ws.git("log", "-1", "--format=%B").stdout.strip() == desc


@pytest.mark.parametrize("path", ["prepare.py", "ground.json", "program.md", "hooks/gitar-hook",
                                  ".pre-commit-config.yaml"])
def test_user_owned_file_modified(measured: Workspace, path: str) -> None:
    ws = measured
    head = ws.tip()
    ws.write_train(0.5)
    target = ws.root / path
    target.write_text(target.read_text() + "\n# changed\n")
    proc = ws.gitar("try", "sneaky")
    assert proc.returncode == REFUSED and f"{path} is user-owned" in proc.stderr
    _unchanged(ws, head)
    assert (ws.root / "train.py").read_text() == fake_train(0.5)


def test_nothing_to_try(measured: Workspace) -> None:
    ws = measured
    proc = ws.gitar("try", "no change")
    assert proc.returncode == REFUSED and "nothing to try" in proc.stderr


@contextmanager
def lock_held_elsewhere(ws: Workspace) -> Iterator[None]:
    """Another live process holds the workspace's experiment lock for the block."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from gitar.host import lock;"
        "l = lock.acquire(Path(sys.argv[1]), purpose='test'); print('held', flush=True); time.sleep(30)"),
        str(ws.root / ".git")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_lock_held_by_a_live_process(measured: Workspace) -> None:
    ws = measured
    with lock_held_elsewhere(ws):
        ws.write_train(0.5)
        head = ws.tip()
        proc = ws.gitar("try", "while busy")
        assert proc.returncode == REFUSED and "another experiment is running" in proc.stderr
        _unchanged(ws, head)
        # a plain git commit is refused by the hook for the same reason
        ws.git("add", "train.py")
        commit = ws.git("commit", "-m", "plain while busy", check=False)
        assert commit.returncode != 0 and "another experiment is running" in commit.stdout + commit.stderr
        assert ws.tip() == head


def test_stale_lock_is_cleared(measured: Workspace) -> None:
    ws = measured
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = ws.root / ".git" / "gitar" / "lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    import socket

    lock_file.write_text(json.dumps({"pid": dead.pid, "pid_start": None, "host": socket.gethostname(),
                                     "token": "old", "purpose": "try", "commit": None,
                                     "started": time.time() - 100}))
    ws.write_train(0.5)
    proc = ws.gitar("try", "after a crash")
    assert proc.returncode == 0, proc.stderr
    assert not lock_file.exists()


def test_syntax_error_is_refused_fast_and_edits_stay(measured: Workspace) -> None:
    ws = measured
    head = ws.tip()
    broken = fake_train(0.5) + "\ndef oops(:\n"
    (ws.root / "train.py").write_text(broken)
    proc = ws.gitar("try", "broken syntax")
    assert proc.returncode == REFUSED
    assert "syntax error in train.py line" in proc.stderr
    _unchanged(ws, head)
    assert (ws.root / "train.py").read_text() == broken


def test_a_model_json_that_is_not_an_object_is_refused(measured: Workspace) -> None:
    """gitar's own check of model.json: one JSON object (its keys are train.py's to check)."""
    ws = measured
    head = ws.tip()
    (ws.root / "model.json").write_text('["depth", 8]\n')
    proc = ws.gitar("try", "model.json as a list")
    assert proc.returncode == REFUSED
    assert "model.json: expected a JSON object at the top level" in proc.stderr
    _unchanged(ws, head)


def test_smoke_failure_is_refused(measured: Workspace) -> None:
    ws = measured
    head = ws.tip()
    ws.write_train(0.5, mode="smoke-fail")
    proc = ws.gitar("try", "shape bug")
    assert proc.returncode == REFUSED
    assert "smoke step failed" in proc.stderr and "shapes cannot be multiplied" in proc.stderr
    _unchanged(ws, head)


def test_smoke_runs_the_index_not_untracked_files(measured: Workspace) -> None:
    ws = measured
    (ws.root / "helper_mod.py").write_text("X = 1\n")
    (ws.root / "train.py").write_text("import helper_mod\n" + fake_train(0.5))
    proc = ws.gitar("try", "imports an untracked module")
    assert proc.returncode == REFUSED and "helper_mod" in proc.stderr


def test_guard_refuses_a_plain_commit_of_other_files(measured: Workspace) -> None:
    ws = measured
    head = ws.tip()
    (ws.root / "prepare.py").write_text("# evaluation changed by the agent\n")
    ws.git("add", "prepare.py")
    proc = ws.git("commit", "-m", "tamper with the harness", check=False)
    assert proc.returncode != 0
    assert "prepare.py is user-owned" in proc.stdout + proc.stderr
    assert ws.tip() == head


def test_merge_in_progress(measured: Workspace) -> None:
    ws = measured
    (ws.root / ".git" / "MERGE_HEAD").write_text(ws.tip() + "\n")
    ws.write_train(0.5)
    proc = ws.gitar("try", "mid-merge")
    assert proc.returncode == REFUSED and "merge is in progress" in proc.stderr


def test_bare_repository(hermetic: Path, tmp_path: Path) -> None:
    # Local: a bare repository is the bad input here, and init_repo makes only repositories with a history.
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "b.git")], check=True)
    proc = subprocess.run([sys.executable, "-m", "gitar", "status"], cwd=tmp_path / "b.git",
                          capture_output=True, text=True)
    assert proc.returncode == REFUSED and "bare repository" in proc.stderr


def test_unborn_branch(hermetic: Path, tmp_path: Path) -> None:
    # Local: a repository without a commit is the bad input here, and init_repo always commits.
    subprocess.run(["git", "init", "-q", str(tmp_path / "u")], check=True)
    proc = subprocess.run([sys.executable, "-m", "gitar", "init", "x"], cwd=tmp_path / "u",
                          capture_output=True, text=True)
    assert proc.returncode == REFUSED and "no commits yet" in proc.stderr


def test_init_twice_is_safe_and_existing_branch_refused(hermetic: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    os.chdir(ws.root)
    first = ws.gitar("init", "t1")
    assert first.returncode == 0 and "created autoresearch/t1" in first.stdout
    assert "data is not prepared" in first.stderr
    again = ws.gitar("init", "t1")
    assert again.returncode == 0 and "already on autoresearch/t1" in again.stdout
    assert ws.git("config", "notes.displayRef").stdout.strip() == "refs/notes/gitar-summary"
    assert ws.git("config", "notes.rewriteRef").stdout.strip() == "refs/notes/gitar"
    assert ws.git("config", "notes.gitar.mergeStrategy").stdout.strip() == "cat_sort_uniq"
    assert (ws.root / ".git" / "hooks" / "pre-commit").exists()
    assert (ws.root / ".git" / "hooks" / "post-commit").exists()
    ws.git("switch", "-q", "main")
    clash = ws.gitar("init", "t1")
    assert clash.returncode == REFUSED and "already exists" in clash.stderr
    bad = ws.gitar("init", "has space")
    assert bad.returncode == REFUSED and "branch name" in bad.stderr


def test_init_with_invalid_ground_json(hermetic: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    os.chdir(ws.root)
    (ws.root / "ground.json").write_text('{"data": {,}')
    proc = ws.gitar("init", "t1")
    assert proc.returncode == REFUSED
    assert "ground.json: invalid JSON at line 1, column" in proc.stderr and "Traceback" not in proc.stderr


def test_core_hooks_path_set(hermetic: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    os.chdir(ws.root)
    ws.git("config", "core.hooksPath", ".githooks")
    proc = ws.gitar("init", "t1")
    assert proc.returncode == REFUSED and "core.hooksPath" in proc.stderr


def _repository_state(ws: Workspace) -> tuple[str, str, str]:
    refs = ws.git("for-each-ref", "--format=%(refname) %(objectname)").stdout
    return ws.git("symbolic-ref", "-q", "HEAD", check=False).stdout, refs, ws.git("status", "--porcelain").stdout


@pytest.mark.parametrize("refusal", ["core.hooksPath", "hooks/gitar-hook", ".pre-commit-config.yaml"])
def test_a_refused_init_changes_nothing(hermetic: Path, tmp_path: Path, refusal: str) -> None:
    """Exit 2 from init: no branch created or checked out, no base pinned, nothing installed."""
    ws = make_workspace(tmp_path / "ws")
    os.chdir(ws.root)
    if refusal == "core.hooksPath":
        ws.git("config", "core.hooksPath", ".githooks")
    else:
        ws.git("rm", "-q", refusal)
        ws.git("commit", "-q", "-m", f"no {refusal}")
    before = _repository_state(ws)
    proc = ws.gitar("init", "t1")
    assert proc.returncode == REFUSED and refusal in proc.stderr, proc.stderr
    assert _repository_state(ws) == before
    assert not (ws.root / ".git" / "hooks" / "pre-commit").exists()


def test_usage_errors_exit_refused(workspace: Workspace) -> None:
    assert workspace.gitar("try").returncode == REFUSED
    assert workspace.gitar("frobnicate").returncode == REFUSED
    assert workspace.gitar("run", "--repeat", "zero").returncode == REFUSED
    proc = workspace.gitar("run", "--repeat", "0")
    assert proc.returncode == REFUSED and "--repeat" in proc.stderr
    proc = workspace.gitar("run", "no-such-rev")
    assert proc.returncode == REFUSED and "unknown revision" in proc.stderr


def test_hook_refuses_a_plain_commit_with_a_syntax_error(measured: Workspace) -> None:
    ws = measured
    head = ws.tip()
    (ws.root / "train.py").write_text(fake_train(0.5) + "\nclass Broken(:\n")
    ws.git("add", "train.py")
    proc = ws.git("commit", "-m", "plain commit, broken syntax", check=False)
    assert proc.returncode != 0 and "syntax error in train.py line" in proc.stdout + proc.stderr
    assert ws.tip() == head


def test_hook_refuses_a_plain_commit_with_an_invalid_model_json(measured: Workspace) -> None:
    ws = measured
    head = ws.tip()
    (ws.root / "model.json").write_text('{"architecture": ')
    ws.git("add", "model.json")
    proc = ws.git("commit", "-m", "plain commit, truncated model.json", check=False)
    assert proc.returncode != 0 and "model.json: invalid JSON at line 1" in proc.stdout + proc.stderr
    assert ws.tip() == head


def _index_and_tree(ws: Workspace) -> tuple[str, str, dict[str, bytes]]:
    """What "nothing changed" means concretely: the index entries, the branch tip, the work tree's bytes."""
    files = {p: (ws.root / p).read_bytes() for p in ("train.py", "model.json")}
    return ws.git("ls-files", "--stage").stdout, ws.tip(), files


@pytest.mark.parametrize("through_hooks", [False, True], ids=["in-process", "through-hooks"])
def test_a_smoke_refusal_leaves_index_and_work_tree_as_they_were(hermetic: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 through_hooks: bool) -> None:
    ws = make_workspace(tmp_path / "ws")
    if through_hooks:
        ws.add_user_hook()  # a user's own hook: the commit goes through the pre-commit framework
    monkeypatch.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    assert ws.gitar("run").returncode == 0
    # Something the agent staged itself beforehand must stay staged, and nothing more.
    model = json.loads((ws.root / "model.json").read_text())
    model["optimization"]["matrix_lr"] = 0.05
    (ws.root / "model.json").write_text(json.dumps(model, indent=2) + "\n")
    ws.git("add", "model.json")
    ws.write_train(0.5, mode="smoke-fail")
    before = _index_and_tree(ws)
    proc = ws.gitar("try", "shape bug")
    assert proc.returncode == REFUSED and "smoke step failed" in proc.stderr, proc.stderr
    assert _index_and_tree(ws) == before
    # So restoring the file brings back the committed train.py, not the refused edit.
    ws.git("checkout", "--", "train.py")
    assert (ws.root / "train.py").read_bytes() == ws.git("show", "HEAD:train.py").stdout.encode()


def test_a_lock_refusal_leaves_the_index_as_it_was(measured: Workspace) -> None:
    ws = measured
    with lock_held_elsewhere(ws):
        ws.write_train(0.5)
        before = _index_and_tree(ws)
        proc = ws.gitar("try", "while busy")
        assert proc.returncode == REFUSED and "another experiment is running" in proc.stderr
        assert _index_and_tree(ws) == before


def test_a_concurrent_try_names_the_running_commit(measured: Workspace) -> None:
    ws = measured
    ws.write_train(0.9, mode="sleep", sleep_s=8)
    proc = ws.gitar("try", "the slow one", "--detach", "--json")
    assert proc.returncode == 0, proc.stderr
    running = json.loads(proc.stdout)["commit"]
    parent = ws.git("rev-parse", f"{running}^").stdout.strip()
    ws.write_train(0.8)
    busy = ws.gitar("try", "meanwhile")
    assert busy.returncode == REFUSED
    assert running[:7] in busy.stderr and '"the slow one"' in busy.stderr, busy.stderr
    assert parent[:7] not in busy.stderr
    ws.git("add", "train.py")
    plain = ws.git("commit", "-m", "plain meanwhile", check=False)  # the hook's refusal says the same
    assert plain.returncode != 0 and running[:7] in plain.stdout + plain.stderr
    ws.git("reset", "-q")
    assert ws.gitar("wait").returncode == 0


def test_off_an_experiment_branch_the_refusal_names_the_branches(workspace: Workspace) -> None:
    ws = workspace
    for tag in ("t2", "t3", "t4", "t5"):
        ws.git("branch", f"autoresearch/{tag}")
    ws.git("switch", "-q", "main")
    proc = ws.gitar("status")
    assert proc.returncode == REFUSED
    assert "autoresearch/t1" in proc.stderr and "and 2 more" in proc.stderr, proc.stderr
    assert "git switch" in proc.stderr


def test_an_unknown_revision_points_at_gitar_log(measured: Workspace) -> None:
    proc = measured.gitar("show", "no-such-rev")
    assert proc.returncode == REFUSED and "`gitar log`" in proc.stderr and "git log --oneline" not in proc.stderr


def test_a_branch_gitar_made_without_gitars_files_is_refused_not_passed_in_silence(workspace: Workspace) -> None:
    """The hooks never pass quietly on an experiment branch whose commit lacks ground.json (#13)."""
    ws = workspace
    ws.git("rm", "-q", "ground.json")
    # Past the pre-commit stage (--no-verify), the post-commit stage says so, in one line.
    proc = ws.git("commit", "--no-verify", "-m", "gitar's files gone", check=False)
    assert proc.returncode == 0
    said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("gitar:")]
    assert len(said) == 1 and said[0].startswith("gitar: error: autoresearch/t1 has no ground.json at HEAD"), said
    head = ws.head()
    (ws.root / "train.py").write_text(fake_train(0.5))
    proc = ws.git("commit", "-am", "an idea", check=False)
    assert proc.returncode != 0, "the pre-commit hook let it through"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("gitar:")]
    assert lines == [f"gitar: refused: autoresearch/t1 has no ground.json at HEAD ({head[:7]}), so gitar cannot "
                     "check or run this experiment: commit gitar's workspace files (ground.json, model.json, "
                     ".pre-commit-config.yaml, hooks/gitar-hook) on this branch, or commit with "
                     "`git commit --no-verify` to leave gitar out"], proc.stdout + proc.stderr
    assert ws.head() == head and not ws.records(head)
