"""Bad input, one case per row: one clear line, exit code 2, no traceback, nothing changed.

Cases span the command line, ground.json, model.json and the repository's state. Each runs
in its own copy of one initialised workspace (fake trainer, baseline measured), so the
suite stays fast while every case starts from the same real repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import apply_hermetic
from tests.core.conftest import Workspace, fake_train, make_workspace

REFUSED = 2


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Workspace], None]
    argv: tuple[str, ...]
    expect: str  # a fragment of the one line
    cwd: Callable[[Workspace], Path] | None = None


def _json_edit(name: str, edit: Callable[[dict[str, object]], None]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        data = json.loads((ws.root / name).read_text())
        edit(data)
        (ws.root / name).write_text(json.dumps(data, indent=2))
    return setup


def _raw(name: str, text: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        (ws.root / name).write_text(text)
    return setup


def _nothing(ws: Workspace) -> None:
    pass


def _g(section: str, key: str, value: object) -> Callable[[Workspace], None]:
    def edit(d: dict[str, object]) -> None:
        sec = d[section]
        assert isinstance(sec, dict)
        sec[key] = value
    return _json_edit("ground.json", edit)


def _m(section: str, key: str, value: object) -> Callable[[Workspace], None]:
    def edit(d: dict[str, object]) -> None:
        sec = d[section]
        assert isinstance(sec, dict)
        sec[key] = value
    return _json_edit("model.json", edit)


def _rename(name: str, section: str, old: str, new: str) -> Callable[[Workspace], None]:
    def edit(d: dict[str, object]) -> None:
        sec = d[section]
        assert isinstance(sec, dict)
        sec[new] = sec.pop(old)
    return _json_edit(name, edit)


def _drop(name: str, section: str, key: str) -> Callable[[Workspace], None]:
    def edit(d: dict[str, object]) -> None:
        sec = d[section]
        assert isinstance(sec, dict)
        del sec[key]
    return _json_edit(name, edit)


def _on_main(ws: Workspace) -> None:
    ws.git("switch", "-q", "main")


def _git_file(name: str, text: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        (ws.root / ".git" / name).write_text(text)
    return setup


def _dir(name: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        (ws.root / ".git" / name).mkdir()
    return setup


def _then(*steps: Callable[[Workspace], None]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        for step in steps:
            step(ws)
    return setup


_edit_train = _raw("train.py", fake_train(0.5))
INIT = ("init", "t2")  # ground.json is read from the work tree by init
TRY = ("try", "an idea")  # model.json and train.py are checked from the work tree before committing

CASES = [
    # -- the command line ---------------------------------------------------------------
    Case("cli-empty-description", _edit_train, ("try", ""), "the description is empty"),
    Case("cli-blank-description", _edit_train, ("try", " \t\n"), "the description is empty"),
    Case("cli-huge-description", _edit_train, ("try", "y" * 100_000), "keep it under"),
    Case("cli-empty-hypothesis", _edit_train, ("try", "x", "--hypothesis", " "), "--hypothesis is empty"),
    Case("cli-repeat-zero", _nothing, ("run", "--repeat", "0"), "--repeat must be at least 1"),
    Case("cli-repeat-not-a-number", _nothing, ("run", "--repeat", "many"), "many"),
    Case("cli-unknown-command", _nothing, ("frobnicate",), "frobnicate"),
    Case("cli-unknown-option", _nothing, ("try", "x", "--turbo"), "--turbo"),
    Case("cli-missing-argument", _nothing, ("learn",), "Missing argument"),
    Case("cli-unknown-revision-run", _nothing, ("run", "nope"), "unknown revision 'nope'"),
    Case("cli-unknown-revision-show", _nothing, ("show", "nope"), "unknown revision 'nope'"),
    Case("cli-learn-without-record",  # a commit made with the hooks switched off has no record
         lambda ws: ws.git("-c", "core.hooksPath=/nonexistent", "commit", "-q", "--allow-empty", "-m", "e"),
         ("learn", "HEAD", "a lesson"), "has no gitar record"),
    Case("cli-init-bad-tag", _nothing, ("init", "a b"), "cannot be part of a branch name"),
    Case("cli-init-empty-tag", _nothing, ("init", ""), "TAG is empty"),
    # -- ground.json (gitar init validates the work tree's copy) ------------------------------
    Case("ground-invalid-json", _raw("ground.json", '{"data": [1, }'), INIT, "ground.json: invalid JSON at line 1"),
    Case("ground-not-an-object", _raw("ground.json", "[]"), INIT, "expected an object"),
    Case("ground-missing-section", _json_edit("ground.json", lambda d: d.pop("processor")), INIT,
         "missing key processor"),
    Case("ground-missing-key", _drop("ground.json", "training", "max_seq_len"), INIT,
         "missing key training.max_seq_len"),
    Case("ground-typo-key", _rename("ground.json", "training", "eval_tokens", "eval_token"), INIT,
         'did you mean "eval_tokens"'),
    Case("ground-unknown-key", _g("data", "shuffle", True), INIT, "data.shuffle: unknown key"),
    Case("ground-wrong-type", _g("training", "max_seq_len", "2048"), INIT, "training.max_seq_len: expected an integer"),
    Case("ground-bad-mode", _g("training", "mode", "turbo"), INIT, "training.mode: must be one of"),
    Case("ground-bad-dtype", _g("processor", "dtype", "fp8"), INIT, "processor.dtype: must be one of"),
    Case("ground-timeout-below-budget", _g("experiment", "timeout_s", 0.5), INIT, "experiment.timeout_s: must exceed"),
    Case("ground-bos-not-special", _g("tokenizer", "bos_token", "<s>"), INIT, "tokenizer.bos_token"),
    Case("ground-prefix-no-slash", _g("experiment", "branch_prefix", "exp"), INIT, 'must end with "/"'),
    Case("ground-shards-past-val", _g("data", "num_train_shards", 99999), INIT, "data.num_train_shards"),
    Case("ground-bad-keep-rule", _g("experiment", "keep_rule", "lenient"), INIT, "experiment.keep_rule"),
    Case("ground-duplicate-key", _raw("ground.json", '{"data": {}, "data": {}}'), INIT, "appears twice"),
    Case("ground-not-utf8", lambda ws: (ws.root / "ground.json").write_bytes(b"\xff\xfe{"), INIT, "not UTF-8"),
    # -- model.json (gitar try checks it before committing) ----------------------------------
    Case("model-invalid-json", _raw("model.json", '{"architecture": '), TRY, "model.json: invalid JSON at line 1"),
    Case("model-typo", _rename("model.json", "architecture", "depth", "detph"), TRY, 'did you mean "depth"'),
    Case("model-wrong-type", _m("architecture", "depth", "8"), TRY, "architecture.depth: expected an integer"),
    Case("model-zero-depth", _m("architecture", "depth", 0), TRY, "architecture.depth: must be at least 1"),
    Case("model-bool-as-int", _m("optimization", "device_batch_size", True), TRY, "expected an integer"),
    Case("model-empty-object", _raw("model.json", "{}"), TRY, "missing key architecture"),
    Case("model-batch-not-divisible", _m("optimization", "total_batch_size", 1000), TRY, "not a multiple of"),
    Case("model-betas", _m("optimization", "adam_betas", [0.9, 1.0]), TRY, "each beta must be below 1"),
    Case("model-schedule", _m("optimization", "warmup_ratio", 0.8), TRY, "warmup_ratio + warmdown_ratio"),
    Case("model-window-pattern", _m("architecture", "window_pattern", "SXL"), TRY, "use only S (short) and L"),
    Case("model-odd-head-dim", _m("architecture", "head_dim", 65), TRY, "must be even"),
    # -- train.py ---------------------------------------------------------------------------
    Case("train-syntax-error", _raw("train.py", "def f(:\n"), TRY, "syntax error in train.py line 1"),
    Case("train-binary", lambda ws: (ws.root / "train.py").write_bytes(b"\x00\x01\x02binary"), TRY,
         "train.py is not Python source"),
    # -- the repository's state ----------------------------------------------------------------
    Case("repo-not-experiment-branch", _then(_on_main, _edit_train), TRY, "main is not an experiment branch"),
    Case("repo-detached-head", lambda ws: ws.git("switch", "-q", "--detach", "HEAD"), TRY, "HEAD is detached"),
    Case("repo-merge-in-progress", _then(_edit_train, lambda ws: _git_file("MERGE_HEAD", ws.head() + "\n")(ws)),
         TRY, "merge is in progress"),
    Case("repo-rebase-in-progress", _then(_edit_train, _dir("rebase-merge")), TRY, "rebase is in progress"),
    Case("repo-user-owned-modified", _then(_edit_train, _raw("program.md", "# mine now\n")), TRY,
         "program.md is user-owned"),
    Case("repo-nothing-to-try", _nothing, TRY, "nothing to try"),
    Case("repo-not-a-repository", _nothing, ("status",), "not inside a git repository", cwd=lambda ws: ws.root.parent / "elsewhere"),
    Case("repo-bare", lambda ws: subprocess.run(["git", "init", "-q", "--bare", str(ws.root.parent / "bare.git")], check=True),
         ("status",), "bare repository", cwd=lambda ws: ws.root.parent / "bare.git"),
    Case("repo-unborn", lambda ws: subprocess.run(["git", "init", "-q", str(ws.root.parent / "unborn")], check=True),
         ("init", "x"), "no commits yet", cwd=lambda ws: ws.root.parent / "unborn"),
    Case("repo-init-existing-branch", _on_main, ("init", "t1"), "already exists"),
]


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("badinput")
    with pytest.MonkeyPatch.context() as mp:
        apply_hermetic(mp, base / "home", pre_commit_home)
        ws = make_workspace(base / "ws")
        mp.chdir(ws.root)
        assert ws.gitar("init", "t1").returncode == 0
        assert ws.gitar("run").returncode == 0
        yield ws.root


def _state(ws: Workspace) -> tuple[str, str, str]:
    refs = ws.git("show-ref", check=False).stdout
    head = ws.git("symbolic-ref", "-q", "HEAD", check=False).stdout + ws.git("rev-parse", "HEAD").stdout
    status = ws.git("status", "--porcelain", "--untracked-files=all").stdout
    return refs, head, status


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, template: Path, tmp_path: Path, hermetic: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(template, root, symlinks=True)
    ws = Workspace(root)
    (tmp_path / "elsewhere").mkdir()
    case.setup(ws)
    before = _state(ws)
    cwd = case.cwd(ws) if case.cwd else root
    proc = subprocess.run([sys.executable, "-m", "gitar", *case.argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr
    assert proc.returncode == REFUSED, f"exit {proc.returncode}: {proc.stdout}{err}"
    assert "Traceback" not in err + proc.stdout
    assert case.expect in err, err
    if proc.stderr.startswith("gitar: error:"):
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err  # one line
    assert _state(ws) == before, "a refused command changed the repository"


def test_the_suite_counts_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
