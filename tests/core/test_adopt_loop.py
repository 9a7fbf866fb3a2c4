"""The whole loop in an adopted karpathy/autoresearch clone: the real CLI, pre-commit, hooks and sandbox.

A git repository laid out like upstream, built from testing/fixtures/upstream (its train.py and
prepare.py, unmodified but for MAX_SHARD: upstream's last shard is 6542, which `gitar init`'s
preset pins as the validation shard) plus program.md and pyproject.toml; the data in the temp
HOME's ~/.cache/autoresearch as upstream's prepare.py leaves it. `gitar init`, then a baseline,
experiments that keep, discard and crash, a plain `git commit`, upstream's own CUDA-only head
on this CUDA-less machine, and a refusal. Every verdict asserted follows from the numbers the
records hold. Each run trains the fixture for real (12 steps on the CPU): slow.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from testing.commands import git, gitar
from testing.hermetic import REPO_ROOT
from testing.workspace import init_repo

pytestmark = pytest.mark.slow

FIXTURE = REPO_ROOT / "testing" / "fixtures" / "upstream"
BRANCH = "autoresearch/e2e"
# Upstream's head: FA3 from the `kernels` package and the GPU's capability, both at import.
STAND_IN = "fa3 = SimpleNamespace(flash_attn_func=_flash_attn_func)\n"
UPSTREAM_HEAD = ("from kernels import get_kernel\n"
                 "cap = torch.cuda.get_device_capability()\n"
                 "repo = 'varunneal/flash-attention-3' if cap == (9, 0) else 'kernels-community/flash-attn3'\n"
                 "fa3 = get_kernel(repo).flash_attn_interface\n")


def records(root: Path) -> list[dict[str, object]]:
    """`gitar log --json`: one record a line, newest first."""
    proc = gitar(root, "log", "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def note(root: Path, sha: str) -> dict[str, object]:
    """The full git-notes record of a commit (fields `gitar log` leaves out, e.g. val_bpb_source)."""
    return json.loads(git(root, "notes", "--ref=refs/notes/gitar", "show", sha).stdout.splitlines()[-1])


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").stdout.strip()


def clean(root: Path) -> bool:
    return git(root, "status", "--porcelain").stdout == ""


def upstream_data(home: Path) -> None:
    """~/.cache/autoresearch as upstream's prepare.py leaves it: shards (the last validates), tokenizer files."""
    cache = home / ".cache" / "autoresearch"
    (cache / "data").mkdir(parents=True)
    for n in (0, 6542):
        docs = [f"document {n}-{i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}." for i in range(300)]
        pq.write_table(pa.table({"text": docs}), cache / "data" / f"shard_{n:05d}.parquet", row_group_size=100)
    (cache / "tokenizer").mkdir()
    (cache / "tokenizer" / "tokenizer.pkl").write_bytes(b"upstream's pickled encoding (the fixture's is bytes)")
    torch.save(torch.tensor([1] * 256 + [0] * 4, dtype=torch.int32), cache / "tokenizer" / "token_bytes.pt")


# A train.py that names torch.cuda (upstream's does) makes `gitar init` turn the CPU smoke step off;
# this one still runs on the CPU, so its baseline trains here.
CPU_DEVICE = 'device = torch.device("cpu")\n'
CUDA_MENTION = 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")\n'


def make_adopted(home: Path, tmp_path: Path, *, smoke: bool) -> Path:
    """The upstream-shaped repository, its data prepared, after `gitar init e2e` and a baseline `gitar run`."""
    root = tmp_path / "autoresearch"
    train = (FIXTURE / "train.py").read_text()
    assert CPU_DEVICE in train
    prepare = (FIXTURE / "prepare.py").read_text()
    assert "MAX_SHARD = 1 " in prepare
    init_repo(root, {"train.py": train if smoke else train.replace(CPU_DEVICE, CUDA_MENTION),
                     "prepare.py": prepare.replace("MAX_SHARD = 1 ", "MAX_SHARD = 6542 "),
                     "program.md": "# autoresearch\n\nLOOP FOREVER: edit train.py, run it, keep or reset.\n",
                     "pyproject.toml": '[project]\nname = "autoresearch"\nversion = "0.1.0"\n'},
              branch="master", message="initial commit")
    upstream_data(home)

    init = gitar(root, "init", "e2e")
    assert init.returncode == 0, init.stderr
    assert "data is not prepared" not in init.stderr
    assert git(root, "symbolic-ref", "--short", "HEAD").stdout.strip() == BRANCH
    ground = json.loads((root / "ground.json").read_text())
    assert ground["experiment"]["command"] == ["{python}", "-m", "gitar.runtime.launch", "train.py"]
    assert ground["experiment"]["smoke"] is smoke  # on: the pre-commit CPU smoke step runs the unmodified train.py

    base = gitar(root, "run")
    assert base.returncode == 0, base.stdout + base.stderr
    (rec,) = records(root)
    assert rec["commit"] == head(root) and rec["kind"] == "baseline" and rec["status"] == "keep", rec
    assert isinstance(rec["val_bpb"], float) and rec["num_steps"] == 12
    full = note(root, head(root))
    assert full["val_bpb_source"] == "harness", full  # the export, scored by gitar's evaluator
    assert full["val_bpb"] == rec["val_bpb"]
    return root


@pytest.fixture
def adopted(hermetic: Path, tmp_path: Path) -> Path:
    return make_adopted(hermetic, tmp_path, smoke=True)


def set_lr(root: Path, lr: str) -> None:
    train = root / "train.py"
    source, n = re.subn(r"^LEARNING_RATE = .*$", f"LEARNING_RATE = {lr}", train.read_text(), flags=re.M)
    assert n == 1
    train.write_text(source)


def attempt_ref(root: Path, sha: str) -> str:
    return git(root, "rev-parse", f"refs/gitar/attempts/{sha}").stdout.strip()


def test_the_loop_keeps_discards_and_crashes(adopted: Path) -> None:
    root = adopted
    best, best_bpb = head(root), records(root)[0]["val_bpb"]
    assert isinstance(best_bpb, float)

    # An idea, measured: the verdict follows from its number against the best.
    for lr, desc in (("1e-2", "a higher learning rate"), ("1e-6", "a learning rate too low to learn")):
        set_lr(root, lr)
        proc = gitar(root, "try", desc)
        rec = records(root)[0]
        assert rec["description"] == desc and rec["best_before"] == best_bpb, rec
        sha = str(rec["commit"])
        assert isinstance(rec["val_bpb"], float) and rec["num_steps"] == 12
        assert note(root, sha)["val_bpb_source"] == "harness"
        assert attempt_ref(root, sha) == sha  # every attempt is pinned, kept or not
        if rec["val_bpb"] < best_bpb:
            assert rec["status"] == "keep" and proc.returncode == 0, (rec, proc.stdout, proc.stderr)
            assert head(root) == sha
            best, best_bpb = sha, rec["val_bpb"]
        else:
            assert rec["status"] == "discard" and proc.returncode == 1, (rec, proc.stdout, proc.stderr)
            assert head(root) == best
        assert clean(root)
    statuses = [r["status"] for r in records(root)[:2]]
    assert statuses == ["discard", "keep"], statuses  # lr 1e-2 learns faster in 12 steps; 1e-6 does not learn

    # A crash in training: a crash record, the branch back at the best, the attempt pinned.
    train = root / "train.py"
    source = train.read_text()
    anchor = "    step += 1\n"
    train.write_text(source.replace(anchor, anchor + "    if step == 3:\n        raise RuntimeError('boom at step 3')\n"))
    proc = gitar(root, "try", "a bug at step 3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rec = records(root)[0]
    assert rec["status"] == "crash" and rec["val_bpb"] is None, rec
    assert "boom at step 3" in str(rec["cause"]), rec
    assert head(root) == best and clean(root)
    assert attempt_ref(root, str(rec["commit"])) == rec["commit"]

    # A plain `git commit` of train.py on the branch runs the loop as well (the hooks, not the CLI).
    set_lr(root, "1e-6")
    git(root, "commit", "-q", "-am", "by hand: lr 1e-6")
    waited = gitar(root, "wait")
    rec = records(root)[0]
    assert rec["description"] == "by hand: lr 1e-6", rec
    assert isinstance(rec["val_bpb"], float) and rec["best_before"] == best_bpb
    assert (rec["status"] == "keep") == (rec["val_bpb"] < best_bpb), rec
    assert rec["status"] == "discard", (rec, waited.stdout, waited.stderr)
    assert head(root) == best and clean(root)
    assert attempt_ref(root, str(rec["commit"])) == rec["commit"]


@pytest.mark.parametrize("smoke", [False, True], ids=["smoke-off", "smoke-on"])
def test_upstreams_cuda_head_on_a_cpu_machine(hermetic: Path, tmp_path: Path, smoke: bool) -> None:
    """Smoke off (as init sets it for upstream's train.py): the run is a clean crash record, exit 1.
    Smoke on: the pre-commit smoke step refuses it first, exit 2, noted as rejected. Either way the
    branch stays at the best and the attempt is not lost."""
    root = make_adopted(hermetic, tmp_path, smoke=smoke)
    best = head(root)
    train = root / "train.py"
    source = train.read_text()
    assert STAND_IN in source
    changed = source.replace(STAND_IN, UPSTREAM_HEAD)
    train.write_text(changed)
    proc = gitar(root, "try", "upstream's own head: FA3 via kernels, the GPU's capability")
    rec = records(root)[0]
    assert rec["val_bpb"] is None and rec["description"].startswith("upstream's own head"), rec
    cause = str(rec["cause"])
    assert "No module named 'kernels'" in cause or "CUDA" in cause, rec
    sha = str(rec["commit"])
    assert head(root) == best  # the branch back at (or never left) the best
    assert attempt_ref(root, sha) == sha  # nothing lost: the attempt is pinned
    assert git(root, "show", f"{sha}:train.py").stdout == changed
    if smoke:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert rec["status"] == "rejected" and rec["kind"] == "smoke", rec
        assert proc.stderr.startswith("gitar: error: smoke step failed: ") and proc.stderr.count("\n") == 1
        assert train.read_text() == changed  # the edit is still in the work tree to fix
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert rec["status"] == "crash", rec
        assert clean(root)


def test_a_refusal_changes_nothing(adopted: Path) -> None:
    root = adopted
    (root / "prepare.py").write_text((root / "prepare.py").read_text() + "TIME_BUDGET = 600\n")
    set_lr(root, "1e-2")
    state = (head(root), git(root, "ls-files", "-s").stdout, git(root, "status", "--porcelain").stdout,
             (root / "prepare.py").read_bytes(), (root / "train.py").read_bytes(),
             git(root, "for-each-ref").stdout)
    proc = gitar(root, "try", "a longer budget")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("gitar: error: ") and "prepare.py" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert (head(root), git(root, "ls-files", "-s").stdout, git(root, "status", "--porcelain").stdout,
            (root / "prepare.py").read_bytes(), (root / "train.py").read_bytes(),
            git(root, "for-each-ref").stdout) == state
    assert len(records(root)) == 1


def test_the_smoke_step_sees_the_training_shards_but_not_the_validation_shard(adopted: Path) -> None:
    """The smoke step runs the agent's code with the trainer's view of the cache: a train.py that reads
    the validation shard at import is refused by it (exit 2), its error naming the file it could not open."""
    root = adopted
    best = head(root)
    val = Path(os.environ["HOME"]) / ".cache" / "autoresearch" / "data" / "shard_06542.parquet"
    assert val.is_file()
    train = root / "train.py"
    peek = (f"assert os.path.isfile({str(val.parent / 'shard_00000.parquet')!r}), 'no training shard'\n"
            f"open({str(val)!r}, 'rb').read(1)\n")
    train.write_text(train.read_text().replace("import gc\n", "import gc\n" + peek))
    proc = gitar(root, "try", "peek at the validation shard")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    rec = records(root)[0]
    assert rec["status"] == "rejected" and rec["kind"] == "smoke", rec
    full = note(root, str(rec["commit"]))
    cause = str(full.get("cause") or full.get("reason"))  # `gitar log` shortens it
    assert "FileNotFoundError" in cause and "shard_06542.parquet" in cause, full  # the open(), not the assert
    assert head(root) == best
