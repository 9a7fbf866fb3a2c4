"""Bad input, one case per row: one clear line, exit code 2, no traceback, nothing changed.

Cases span the command line, ground.json, model.json and the repository's state. Each runs
in its own copy of one initialised workspace (fake trainer, baseline measured), so the
suite stays fast while every case starts from the same real repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.hermetic import REPO_ROOT, apply_hermetic
from testing.trainers import fake_train
from testing.workspace import Workspace, add_loop_files, init_repo, make_workspace

REFUSED = 2


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Workspace], None]
    argv: tuple[str, ...]
    expect: str  # a fragment of the one line
    cwd: Callable[[Workspace], Path] | None = None
    env: dict[str, str] | None = None  # set for the command only


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
    Case("cli-huge-description", _edit_train, ("try", "y" * 100_000), "has 100000 characters, more than 200"),
    Case("cli-long-description", _edit_train, ("try", "y" * 201), "has 201 characters, more than 200"),
    Case("cli-multiline-description", _edit_train, ("try", "wider MLP\n\nNotes (gitar):\n    {}"),
         "the description holds U+000A (a line break) at character 10"),
    Case("cli-cr-description", _edit_train, ("try", "wider\rMLP"), "holds U+000D (a line break)"),
    Case("cli-escape-description", _edit_train, ("try", "\x1b[2Jwider"), "holds U+001B at character 1"),
    Case("cli-c1-description", _edit_train, ("try", "wider\x9b31m"), "holds U+009B"),
    Case("cli-del-description", _edit_train, ("try", "wider\x7f"), "holds U+007F"),
    Case("cli-tab-description", _edit_train, ("try", "wider\tMLP"), "holds U+0009"),
    Case("cli-bidi-description", _edit_train, ("try", "wider \u202eLPM"), "holds U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    Case("cli-isolate-description", _edit_train, ("try", "a \u2067b"), "holds U+2067 (RIGHT-TO-LEFT ISOLATE)"),
    Case("cli-mark-description", _edit_train, ("try", "a \u200fb"), "holds U+200F (RIGHT-TO-LEFT MARK)"),
    Case("cli-arabic-mark-description", _edit_train, ("try", "a \u061cb"), "holds U+061C (ARABIC LETTER MARK)"),
    Case("cli-line-separator-description", _edit_train, ("try", "a\u2028b"), "holds U+2028 (a line break)"),
    Case("cli-paragraph-separator-description", _edit_train, ("try", "a\u2029b"), "holds U+2029 (a line break)"),
    Case("cli-nel-description", _edit_train, ("try", "a\x85b"), "holds U+0085 (a line break)"),
    Case("cli-zero-width-description", _edit_train, ("try", "a\u200bb"), "holds U+200B (ZERO WIDTH SPACE)"),
    Case("cli-empty-hypothesis", _edit_train, ("try", "x", "--hypothesis", " "), "--hypothesis is empty"),
    Case("cli-multiline-hypothesis", _edit_train, ("try", "x", "--hypothesis", "a\nb"), "--hypothesis holds U+000A"),
    Case("cli-bidi-hypothesis", _edit_train, ("try", "x", "--hypothesis", "\u202ea"), "--hypothesis holds U+202E"),
    Case("cli-long-hypothesis", _edit_train, ("try", "x", "--hypothesis", "w" * 501),
         "--hypothesis has 501 characters, more than 500"),
    Case("cli-learn-empty-lesson", _nothing, ("learn", "HEAD", ""), 'the lesson is empty; say in one line what it '
         'taught: gitar learn REV "what it taught"'),
    Case("cli-learn-multiline-lesson", _nothing, ("learn", "HEAD", "a\n\nNotes (gitar):"), "the lesson holds U+000A"),
    Case("cli-learn-escape-lesson", _nothing, ("learn", "HEAD", "\x1b]0;title\x07"), "the lesson holds U+001B"),
    Case("cli-learn-long-lesson", _nothing, ("learn", "HEAD", "w" * 501), "the lesson has 501 characters, more than 500"),
    Case("cli-try-no-argument", _edit_train, ("try",), "gitar try: missing argument DESCRIPTION"),
    Case("cli-learn-no-lesson", _nothing, ("learn", "HEAD"), "gitar learn: missing argument LESSON"),
    Case("cli-repeat-zero", _nothing, ("run", "--repeat", "0"), "--repeat must be at least 1"),
    Case("cli-repeat-not-a-number", _nothing, ("run", "--repeat", "many"), "many"),
    Case("cli-unknown-command", _nothing, ("frobnicate",), "frobnicate"),
    Case("cli-unknown-option", _nothing, ("try", "x", "--turbo"), "--turbo"),
    Case("cli-missing-argument", _nothing, ("learn",), "gitar learn: missing argument REV"),
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
    Case("ground-bad-repeats", _g("experiment", "repeats", "sometimes"), INIT,
         'experiment.repeats: must be one of run, refuse; got "sometimes"'),
    Case("ground-duplicate-key", _raw("ground.json", '{"data": {}, "data": {}}'), INIT, "appears twice"),
    Case("ground-nested-100000", _raw("ground.json", "[" * 100_000 + "]" * 100_000), INIT,
         "ground.json: nested too deeply"),
    Case("ground-not-utf8", lambda ws: (ws.root / "ground.json").write_bytes(b"\xff\xfe{"), INIT, "not UTF-8"),
    # -- model.json (gitar try checks it before committing) ----------------------------------
    Case("model-invalid-json", _raw("model.json", '{"architecture": '), TRY, "model.json: invalid JSON at line 1"),
    Case("model-not-an-object", _raw("model.json", "[1, 2]"), TRY, "model.json: expected a JSON object at the top level"),
    # model.json's schema (keys, types, ranges) is train.py's: tests/harness/test_train.py checks it,
    # the test at the end of this file that `gitar try` refuses a typo through the smoke step.
    Case("model-nested-100000-lists", _raw("model.json", "[" * 100_000 + "]" * 100_000), TRY,
         "model.json: nested too deeply"),
    Case("model-nested-100000-objects", _raw("model.json", '{"a": ' * 100_000 + "1" + "}" * 100_000), TRY,
         "model.json: nested too deeply"),
    Case("model-nested-40", _raw("model.json", "[" * 40 + "]" * 40), TRY, "model.json: nested too deeply"),
    Case("model-huge-integer", _raw("model.json", '{"architecture": {"depth": 1' + "0" * 5000 + "}}"), TRY,
         "model.json: a value the JSON parser refuses"),
    Case("model-huge-string", _raw("model.json", '{"architecture": "' + "x" * 2_000_000 + '"}'), TRY,
         "model.json: more than 1048576 bytes"),
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
    # Local repositories: bare and unborn are the bad input, and init_repo makes only ones with a history.
    Case("repo-bare", lambda ws: subprocess.run(["git", "init", "-q", "--bare", str(ws.root.parent / "bare.git")], check=True),
         ("status",), "bare repository", cwd=lambda ws: ws.root.parent / "bare.git"),
    Case("repo-unborn", lambda ws: subprocess.run(["git", "init", "-q", str(ws.root.parent / "unborn")], check=True),
         ("init", "x"), "no commits yet", cwd=lambda ws: ws.root.parent / "unborn"),
    Case("repo-init-existing-branch", _on_main, ("init", "t1"), "already exists"),
    # -- the environment -----------------------------------------------------------------------
    # The first run's seed: refused before the commit (try) or the run (run), as train.py refuses it.
    Case("env-bad-seed-try", _edit_train, TRY, "GITAR_SEED: expected a non-negative integer, got 'forty-two'",
         env={"GITAR_SEED": "forty-two"}),
    Case("env-bad-seed-run", _nothing, ("run",), "GITAR_SEED: expected a non-negative integer, got '-1'",
         env={"GITAR_SEED": "-1"}),
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


def _state(ws: Workspace) -> tuple[str, str, str, str, dict[str, str]]:
    """Refs and notes, HEAD, the index's entries, the status, and every work tree file's content."""
    refs = ws.git("show-ref", check=False).stdout
    head = ws.git("symbolic-ref", "-q", "HEAD", check=False).stdout + ws.git("rev-parse", "HEAD").stdout
    index = ws.git("ls-files", "--stage").stdout
    status = ws.git("status", "--porcelain", "--untracked-files=all").stdout
    files = {str(p.relative_to(ws.root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(ws.root.rglob("*")) if p.is_file() and ".git" not in p.relative_to(ws.root).parts}
    return refs, head, index, status, files


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
                          timeout=120, env={**os.environ, **(case.env or {})})
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


def test_train_py_refuses_a_deeply_nested_model_json_in_one_line(tmp_path: Path) -> None:
    """train.py loads model.json with its own load_model: the same one line, exit 2, no traceback."""
    for name in ("train.py", "prepare.py", "ground.json"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    (tmp_path / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    # As ground.json runs it: under gitar's launcher, which turns the GitarError into its one line and code.
    proc = subprocess.run([sys.executable, "-m", "gitar.runtime.launch", "train.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == REFUSED, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "model.json: nested too deeply (more than 32 levels of objects and lists); a configuration file is flat"]


def test_a_model_json_typo_is_refused_by_train_py_through_the_smoke_step(hermetic: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """model.json's schema is train.py's (#12): the real train.py's loader, run by the smoke step, refuses
    a typo as one line, exit 2, nothing committed, the agent's edit where it was."""
    from testing.prepared import script_workspace

    root = script_workspace(tmp_path / "ws", preset=True)
    add_loop_files(root)
    ws = init_repo(root)
    monkeypatch.chdir(root)
    assert ws.gitar("init", "t1").returncode == 0
    before = ws.head()
    model = json.loads((root / "model.json").read_text())
    model["architecture"]["depht"] = model["architecture"].pop("depth")
    edited = json.dumps(model, indent=2)
    (root / "model.json").write_text(edited)
    proc = ws.gitar("try", "typo in model.json", timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert 'model.json: architecture.depht: unknown key; did you mean "depth"?' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert ws.head() == before and (root / "model.json").read_text() == edited
    assert ws.git("diff", "--cached", "--name-only").stdout == ""
