"""`gitar init TAG` in a karpathy/autoresearch clone: gitar's files added, committed, then the branch.

A real git clone of a repository laid out like upstream (its own train.py, prepare.py, program.md,
pyproject.toml; the cache in ~/.cache/autoresearch), the real pre-commit and the real hooks.
The upstream files here only have the shape init looks at (train.py hard-codes CUDA and FA3).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from testing.commands import git, gitar
from testing.hermetic import REPO_ROOT
from testing.workspace import init_repo

UPSTREAM_TRAIN = '''\
"""autoresearch pretraining script (shape only)."""
import torch
from kernels import get_kernel
cap = torch.cuda.get_device_capability()
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb
'''
UPSTREAM_PREPARE = '''\
"""autoresearch data preparation (shape only)."""
import os
MAX_SEQ_LEN = 2048
TIME_BUDGET = 300
EVAL_TOKENS = 40 * 524288
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
VAL_SHARD = 6542
'''
UPSTREAM_PROGRAM = """\
# autoresearch

LOOP FOREVER:
1. git commit
2. Run the experiment: `uv run train.py > run.log 2>&1`
3. grep "^val_bpb:" run.log
4. If val_bpb did not improve, git reset back to where you started
"""
UPSTREAM_PYPROJECT = '[project]\nname = "autoresearch"\nversion = "0.1.0"\n'
ADDED = {"ground.json", ".pre-commit-config.yaml", "hooks/gitar-hook", "program.md"}


@pytest.fixture
def clone(hermetic: Path, tmp_path: Path) -> Path:
    """A clone of an upstream-shaped repository on its default branch, master."""
    origin = tmp_path / "autoresearch"
    init_repo(origin, {"train.py": UPSTREAM_TRAIN, "prepare.py": UPSTREAM_PREPARE, "program.md": UPSTREAM_PROGRAM,
                       "pyproject.toml": UPSTREAM_PYPROJECT}, branch="master", message="initial commit")
    dest = tmp_path / "research"
    git(tmp_path, "clone", "-q", str(origin), str(dest))
    return dest


def upstream_cache(home: Path) -> Path:
    """~/.cache/autoresearch as upstream's prepare.py leaves it: shards, tokenizer.pkl, token_bytes.pt."""
    cache = home / ".cache" / "autoresearch"
    (cache / "data").mkdir(parents=True)
    (cache / "tokenizer").mkdir()
    for n in (0, 1, 6542):
        pq.write_table(pa.table({"text": [f"document {n} {i}" for i in range(20)]}), cache / "data" / f"shard_{n:05d}.parquet")
    (cache / "tokenizer" / "tokenizer.pkl").write_bytes(b"upstream pickled encoding")
    torch.save(torch.tensor([1, 2, 3, 0], dtype=torch.int32), cache / "tokenizer" / "token_bytes.pt")
    return cache


def tree_state(root: Path) -> dict[str, object]:
    """Everything init may change: refs, HEAD, index, work tree (bytes, modes), local config, hooks."""
    files = {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
             for p in sorted(root.rglob("*")) if ".git" not in p.relative_to(root).parts and p.is_file()}
    dirs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".git" not in p.relative_to(root).parts and p.is_dir())
    return {
        "refs": git(root, "for-each-ref", "--format=%(refname) %(objectname)").stdout,
        "head": git(root, "rev-parse", "HEAD").stdout + git(root, "symbolic-ref", "-q", "HEAD", check=False).stdout,
        "index": git(root, "ls-files", "-s").stdout,
        "status": git(root, "status", "--porcelain", "--ignored").stdout,
        "config": (root / ".git" / "config").read_bytes(),
        "hooks": sorted(p.name for p in (root / ".git" / "hooks").iterdir()),
        "gitar": (root / ".git" / "gitar").exists(),
        "files": files,
        "dirs": dirs,
    }


def test_init_commits_gitar_files_on_the_current_branch_then_makes_the_branch(clone: Path) -> None:
    start = git(clone, "rev-parse", "HEAD").stdout.strip()
    proc = gitar(clone, "init", "nov21")
    assert proc.returncode == 0, proc.stderr
    # What it adds is said before it is done, then the commit and the branch.
    for rel in ("ground.json", ".pre-commit-config.yaml", "hooks/gitar-hook"):
        assert f"  add {rel}\n" in proc.stdout
    assert "  append a marked section to program.md\n" in proc.stdout
    assert "note: train.py hard-codes CUDA" in proc.stdout
    assert "gitar: committed gitar's files on master as " in proc.stdout
    assert "created autoresearch/nov21" in proc.stdout

    adopted = git(clone, "rev-parse", "master").stdout.strip()
    assert git(clone, "rev-parse", "master~1").stdout.strip() == start
    assert git(clone, "log", "-1", "--format=%s", "master").stdout.startswith("gitar: add ground.json")
    changed = set(git(clone, "diff-tree", "--no-commit-id", "--name-only", "-r", adopted).stdout.split())
    assert changed == ADDED
    assert git(clone, "symbolic-ref", "HEAD").stdout.strip() == "refs/heads/autoresearch/nov21"
    assert git(clone, "rev-parse", "HEAD").stdout.strip() == adopted
    assert git(clone, "rev-parse", "refs/gitar/base/autoresearch/nov21").stdout.strip() == adopted
    assert git(clone, "status", "--porcelain").stdout == ""

    ground = json.loads((clone / "ground.json").read_text())
    assert ground["data"]["cache_dir"] == "~/.cache/autoresearch"
    assert ground["data"]["val_shard"] == 6542
    assert ground["training"]["time_budget_s"]["train"] == 300
    assert ground["training"]["max_seq_len"] == 2048
    assert ground["training"]["eval_tokens"] == 40 * 524288
    assert ground["experiment"]["agent_owned"] == ["train.py"]  # no model.json in this repository
    for rel in ("prepare.py", "program.md", "pyproject.toml", "uv.lock", "ground.json", "hooks/",
                ".pre-commit-config.yaml"):
        assert rel in ground["experiment"]["user_owned"]
    assert ground["experiment"]["command"] == ["{python}", "-m", "gitar.runtime.launch", "train.py"]
    assert ground["experiment"]["smoke"] is False
    # The hook files are the template's, byte for byte (gitar demo writes the same ones).
    for rel in (".pre-commit-config.yaml", "hooks/gitar-hook"):
        assert (clone / rel).read_bytes() == (REPO_ROOT / rel).read_bytes()
    assert os.access(clone / "hooks" / "gitar-hook", os.X_OK)
    program = (clone / "program.md").read_text()
    assert program.startswith(UPSTREAM_PROGRAM)
    assert program.count("<!-- gitar: begin -->") == 1 and "gitar try" in program
    assert (clone / "train.py").read_text() == UPSTREAM_TRAIN
    assert (clone / "prepare.py").read_text() == UPSTREAM_PREPARE
    assert (clone / ".git" / "hooks" / "pre-commit").exists()
    assert (clone / ".git" / "hooks" / "post-commit").exists()
    # No cache yet: a hint, not a failure, in the terms of upstream's prepare.py (it has no --source).
    assert "data is not prepared in" in proc.stderr and "uv run prepare.py" in proc.stderr
    assert "--source" not in proc.stderr


def test_rerun_is_idempotent(clone: Path) -> None:
    assert gitar(clone, "init", "nov21").returncode == 0
    before = tree_state(clone)
    proc = gitar(clone, "init", "nov21")
    assert proc.returncode == 0, proc.stderr
    assert "already on autoresearch/nov21" in proc.stdout
    assert "add ground.json" not in proc.stdout
    assert tree_state(clone) == before
    # From the branch it started on, the same tag is refused and nothing changes either.
    git(clone, "switch", "-q", "master")
    before = tree_state(clone)
    proc = gitar(clone, "init", "nov21")
    assert proc.returncode == 2
    assert proc.stderr.startswith("gitar: error: branch autoresearch/nov21 already exists")
    assert tree_state(clone) == before


def _stage_a_change(root: Path) -> None:
    (root / "pyproject.toml").write_text(UPSTREAM_PYPROJECT + "# mine\n")
    git(root, "add", "pyproject.toml")


@pytest.mark.parametrize(("setup", "says"), [
    (_stage_a_change, "the index has staged changes"),
    (lambda r: git(r, "config", "core.hooksPath", ".husky"), "core.hooksPath is set (.husky)"),
    (lambda r: git(r, "branch", "autoresearch/nov21"), "branch autoresearch/nov21 already exists"),
    (lambda r: git(r, "switch", "-q", "--detach"), "HEAD is detached"),
    (lambda r: (r / ".pre-commit-config.yaml").write_text("repos: []\n"), ".pre-commit-config.yaml exists but"),
    (lambda r: (r / "program.md").write_text("edited\n"), "program.md has uncommitted changes"),
    (lambda r: (r / "prepare.py").unlink(), "ground.json: not found in"),
    (lambda r: git(r, "config", "user.useConfigOnly", "true"), None),  # identity from the env: still fine
], ids=["staged", "hooksPath", "branch-exists", "detached", "half-set-up", "program-edited", "no-prepare",
        "identity"])
def test_refusals_change_nothing(clone: Path, setup, says: str | None) -> None:  # type: ignore[no-untyped-def]
    setup(clone)
    before = tree_state(clone)
    proc = gitar(clone, "init", "nov21")
    if says is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"gitar: error: {says}"), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stdout == ""
    assert tree_state(clone) == before


def test_a_failed_commit_leaves_nothing(clone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No identity for the commit: refused before any file is written."""
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{who}_NAME")
        monkeypatch.delenv(f"GIT_{who}_EMAIL")
    git(clone, "config", "user.useConfigOnly", "true")
    before = tree_state(clone)
    proc = gitar(clone, "init", "nov21")
    assert proc.returncode == 2
    assert proc.stderr.startswith("gitar: error: git has no identity"), proc.stderr
    assert tree_state(clone) == before


def _experiment_branch_without_files(clone: Path, commit_ground: bool) -> None:
    """init ran (hooks installed), then a branch off the upstream commit with gitar's files copied in by hand."""
    assert gitar(clone, "init", "nov21").returncode == 0
    git(clone, "switch", "-q", "-c", "autoresearch/old", "master~1")
    for rel in ("ground.json", ".pre-commit-config.yaml", "hooks/gitar-hook"):
        (clone / rel).parent.mkdir(exist_ok=True)
        (clone / rel).write_bytes(git(clone, "show", f"master:{rel}").stdout.encode())
    (clone / "hooks" / "gitar-hook").chmod(0o755)
    if commit_ground:
        git(clone, "add", "ground.json")
        git(clone, "commit", "-q", "--no-verify", "-m", "ground.json only")


@pytest.mark.parametrize(("commit_ground", "line"), [
    (False, "gitar: refused: autoresearch/old has no ground.json at HEAD"),
    (True, "gitar: refused: autoresearch/old has no .pre-commit-config.yaml at HEAD"),
])
def test_hooks_refuse_an_experiment_branch_lacking_gitar_files(clone: Path, commit_ground: bool, line: str) -> None:
    _experiment_branch_without_files(clone, commit_ground)
    head = git(clone, "rev-parse", "HEAD").stdout
    (clone / "train.py").write_text(UPSTREAM_TRAIN + "# an idea\n")
    proc = git(clone, "commit", "-q", "-am", "an idea", check=False)
    assert proc.returncode != 0
    assert line in proc.stdout + proc.stderr
    assert git(clone, "rev-parse", "HEAD").stdout == head
    # gitar log and gitar try say what to do too.
    for args in (("log",), ("try", "an idea")):
        out = gitar(clone, *args)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1
        assert "run `gitar init TAG` on the branch you started from" in out.stderr, out.stderr


def test_data_pin_reads_the_upstream_cache_in_place(clone: Path, hermetic: Path) -> None:
    cache = upstream_cache(hermetic)
    table = cache / "tokenizer" / "token_bytes.pt"
    before = (table.read_bytes(), table.stat().st_mtime_ns)
    listing = sorted(p.name for p in cache.rglob("*"))
    proc = gitar(clone, "init", "nov21")
    assert proc.returncode == 0, proc.stderr
    assert "data is not prepared" not in proc.stderr
    pin = json.loads(git(clone, "cat-file", "blob", "refs/gitar/data/autoresearch/nov21").stdout)
    assert sorted(pin["data"]) == ["data/shard_06542.parquet", "tokenizer/token_bytes.pt", "tokenizer/tokenizer.pkl"]
    assert (table.read_bytes(), table.stat().st_mtime_ns) == before
    assert sorted(p.name for p in cache.rglob("*")) == listing  # nothing written beside or over it


def _gitar_workspace(tmp_path: Path, cache: Path) -> Path:
    """gitar's own prepare.py with ground.json data.cache_dir pointed at `cache`."""
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy2(REPO_ROOT / "prepare.py", ws / "prepare.py")
    ground = json.loads((REPO_ROOT / "ground.json").read_text())
    ground["data"]["cache_dir"] = str(cache)
    ground["data"]["num_train_shards"] = 2
    (ws / "ground.json").write_text(json.dumps(ground))
    return ws


def _prepare(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=ws, capture_output=True, text=True, env=env,
                          timeout=120)


def test_gitar_prepare_never_overwrites_upstream_token_bytes(hermetic: Path, tmp_path: Path) -> None:
    cache = upstream_cache(hermetic)
    table = cache / "tokenizer" / "token_bytes.pt"
    before = (table.read_bytes(), table.stat().st_mtime_ns)
    listing = sorted(str(p) for p in cache.rglob("*"))
    ws = _gitar_workspace(tmp_path, cache)
    proc = _prepare(ws)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "holds autoresearch's tokenizer (tokenizer.pkl, token_bytes.pt)" in proc.stderr
    assert (table.read_bytes(), table.stat().st_mtime_ns) == before
    assert sorted(str(p) for p in cache.rglob("*")) == listing


def test_source_holding_the_validation_shard_is_refused(hermetic: Path, tmp_path: Path) -> None:
    upstream = upstream_cache(hermetic)
    fresh = tmp_path / "fresh-cache"
    ws = _gitar_workspace(tmp_path, fresh)
    source_listing = sorted(str(p) for p in upstream.rglob("*"))
    proc = _prepare(ws, "--source", str(upstream / "data"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "is the pinned validation shard (shard_06542.parquet)" in proc.stderr, proc.stderr
    assert not fresh.exists()  # nothing written
    assert sorted(str(p) for p in upstream.rglob("*")) == source_listing


def test_preflight_passes_an_adopted_branch_without_model_json(clone: Path) -> None:
    """model.json is optional: train.py alone is agent-owned, and the preflight (smoke off) passes it."""
    assert gitar(clone, "init", "nov21").returncode == 0
    (clone / "train.py").write_text(UPSTREAM_TRAIN + "DEPTH = 9  # an idea\n")
    git(clone, "add", "train.py")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "gitar.loop.hook_entry", "check"], cwd=clone, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # A user-owned file in the same commit is still refused.
    (clone / "prepare.py").write_text(UPSTREAM_PREPARE + "TIME_BUDGET = 600\n")
    git(clone, "add", "prepare.py")
    proc = subprocess.run([sys.executable, "-m", "gitar.loop.hook_entry", "check"], cwd=clone, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "prepare.py" in proc.stderr and proc.stderr.startswith("gitar: refused:"), proc.stderr


def test_a_refusal_after_the_commit_undoes_it(clone: Path) -> None:
    """--worktrees: a worktree path taken is found after gitar's files are committed; init undoes the commit."""
    (clone.parent / f"{clone.name}-nov21-gpu0").mkdir()
    before = tree_state(clone)
    proc = gitar(clone, "init", "nov21", "--worktrees", "1")
    assert proc.returncode == 2, proc.stderr
    assert "already exists; move it away or pass --worktree-dir DIR" in proc.stderr
    assert tree_state(clone) == before


def test_the_preset_takes_the_constants_a_forks_prepare_py_sets(clone: Path) -> None:
    # A fork with a longer budget, a shorter context, another validation shard and its own cache:
    # ground.json must agree with the prepare.py that measures, or the data pin and the budgets
    # would describe files and numbers that prepare.py never uses.
    fork = (UPSTREAM_PREPARE.replace("MAX_SEQ_LEN = 2048", "MAX_SEQ_LEN = 1024")
            .replace("TIME_BUDGET = 300", "TIME_BUDGET = 600")
            .replace("EVAL_TOKENS = 40 * 524288", "EVAL_TOKENS = 10 * 524288")
            .replace('".cache", "autoresearch"', '".cache", "myfork"')
            .replace("VAL_SHARD = 6542", "MAX_SHARD = 99\nVAL_SHARD = MAX_SHARD\nVOCAB_SIZE = 4096"))
    (clone / "prepare.py").write_text(fork)
    git(clone, "commit", "-qam", "fork")
    proc = gitar(clone, "init", "fork")
    assert proc.returncode == 0, proc.stderr
    ground = json.loads((clone / "ground.json").read_text())
    assert ground["data"]["cache_dir"] == "~/.cache/myfork"
    assert ground["data"]["val_shard"] == 99
    assert ground["tokenizer"]["vocab_size"] == 4096
    assert ground["training"]["max_seq_len"] == 1024
    assert ground["training"]["time_budget_s"]["train"] == 600
    assert ground["training"]["eval_tokens"] == 10 * 524288
