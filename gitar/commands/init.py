"""`gitar init TAG`: an experiment branch with the hooks installed and notes that behave.

Safe to run twice: on the branch it creates, a second run re-applies the hooks and
config and changes nothing else.

The branch's base is recorded too (gitar/loop/integrity.py): refs/gitar/base/<branch> names
the commit the branch was created on, whose prepare.py and ground.json every experiment
must keep, and the evaluation data is pinned by hash if it is already prepared (else at
the branch's first run). A branch made by an older gitar gets its tip as the base.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gitar.config.schema import GROUND_FILE, MODEL_FILE, Ground, load_ground, parse_ground, read_json_object
from gitar.demo import presets
from gitar.errors import ExitCode, GitarError
from gitar.loop import eval_data, integrity, trust
from gitar.paths import read_device, write_device
from gitar.review import summary
from gitar.store import pins
from gitar.store.git import Git, clean_env
from gitar.store.ledger import Ledger
from gitar.store.refs import ATTEMPTS_PREFIX, NOTES_REF, SUMMARY_REF, base_ref, branch_ref, data_ref

# Config that makes notes follow the commits they describe and show where people look.
NOTES_CONFIG = {
    # Plain `git log` shows each attempt's one line (gitar/review/summary.py), not its JSON records;
    # `git log --notes=gitar` shows those.
    "notes.displayRef": SUMMARY_REF,
    "notes.rewriteRef": NOTES_REF,  # amend and rebase carry the records (no default otherwise)
    "notes.rewriteMode": "cat_sort_uniq",
    "notes.gitar.mergeStrategy": "cat_sort_uniq",  # one JSON record per line merges cleanly
    # `git log --pretty=gitar`: the short sha, then the attempt's line (a commit tried on two
    # branches has a line for each, indented under the first).
    "pretty.gitar": "tformat:%C(auto)%h%C(reset)  %w(0,0,9)%N",
    # `git attempts`: every attempted commit, kept or discarded, newest first, one line each
    # (and `git attempts -20`, `git attempts --since=1.day` as for git log).
    "alias.attempts": f"log --no-walk --no-notes --notes={SUMMARY_REF} --glob={ATTEMPTS_PREFIX} --pretty=gitar",
}


@dataclass(frozen=True)
class InitResult:
    branch: str
    created: bool
    warnings: list[str]
    worktrees: list[Worktree] = field(default_factory=list)  # --worktrees N: one per GPU
    adopted: Adoption | None = None  # gitar's files added to an upstream-style repository, and their commit


@dataclass(frozen=True)
class Worktree:
    branch: str
    path: Path
    device: str
    created: bool


def init_workspace(tag: str, start: str | Path = ".", *, worktrees: int = 0,
                   worktree_dir: str | Path | None = None) -> InitResult:
    git = Git.discover(start)
    if git.head_is_unborn():
        raise GitarError("this repository has no commits yet; commit the workspace files first")
    # Everything that can refuse is checked before anything changes: exit 2 means nothing did.
    adoption = plan_adoption(git, tag, worktrees=worktrees)
    if adoption is not None:
        ground = adoption.ground
        before = git.resolve("HEAD")
        adopt(git, adoption)
        try:
            result = _init(git, ground, tag, worktrees, worktree_dir)
        except BaseException:
            _unadopt(git, before)
            raise
        return InitResult(result.branch, result.created, result.warnings, result.worktrees, adoption)
    ground = load_ground(git.root / GROUND_FILE)
    if MODEL_FILE in ground.experiment.agent_owned:
        read_json_object(git.root / MODEL_FILE)  # the hyperparameters: their schema is train.py's (smoke step)
    _check_installable(git)
    return _init(git, ground, tag, worktrees, worktree_dir)


def _init(git: Git, ground: Ground, tag: str, worktrees: int, worktree_dir: str | Path | None) -> InitResult:
    if worktrees:
        return _init_worktrees(git, ground, tag, worktrees, worktree_dir)
    branch = _branch_name(git, ground, tag)
    current = git.current_branch()
    start = git.resolve("HEAD")
    created = False
    if git.ref_target(branch_ref(branch)) is not None:
        if current != branch:
            raise GitarError(f"branch {branch} already exists; pick another tag, or `git switch {branch}` "
                             "and run gitar init again to repair its hooks")
    else:
        if (op := git.operation_in_progress()) is not None:
            raise GitarError(f"{op} is in progress; finish or abort it first")
        git.run("switch", "-c", branch, advice="commit or stash your changes first")
        created = True
    try:
        _record_base(git, branch, ground, fresh=created)
        _configure(git)
    except BaseException:
        if created:  # undo the branch and its pins: a failed init leaves the repository as it was
            _undo_branch(git, branch, current or start)
        raise
    return InitResult(branch=branch, created=created, warnings=_data_warnings(git, ground))


def _undo_branch(git: Git, branch: str, back_to: str) -> None:
    """Back where init started (a branch, or the detached commit), the new branch and its pins gone."""
    detach = [] if git.ref_target(branch_ref(back_to)) is not None else ["--detach"]
    git.run("switch", "--quiet", *detach, back_to, check=False)
    git.run("branch", "-D", branch, check=False)
    for ref in (base_ref(branch), data_ref(branch)):
        git.run("update-ref", "-d", ref, check=False)


def _configure(git: Git) -> None:
    """Hooks and config, shared by every worktree of the clone."""
    _install_hooks(git)
    for key, value in NOTES_CONFIG.items():
        git.run("config", "--replace-all", key, value)  # one value, even where an older setup added more
    summary.refresh(git)  # a notebook gitar did not write (a clone, an older gitar) gets its summary
    # The hooks start `python -m gitar.loop.hook_entry` with this interpreter: the one that has gitar and torch.
    git.run("config", "gitar.python", sys.executable)


MAX_WORKTREES = 64


def _init_worktrees(git: Git, ground: Ground, tag: str, n: int, where: str | Path | None) -> InitResult:
    """One worktree and branch per GPU (autoresearch/TAG-gpuK, device K), all from the current commit.

    Each worktree runs its own experiments on its own GPU at the same time as the others
    (its lock is its device's, paths.py); they share one notebook, so `gitar log --all`,
    `gitar memory --all` and `gitar best --all` see every agent's attempts. Safe to run
    again: existing worktrees of these branches are repaired, not recreated.
    """
    if not 1 <= n <= MAX_WORKTREES:
        raise GitarError(f"--worktrees must be between 1 and {MAX_WORKTREES}, got {n}")
    if (op := git.operation_in_progress()) is not None:
        raise GitarError(f"{op} is in progress; finish or abort it first")
    parent = Path(where).expanduser().resolve() if where is not None else git.root.parent
    existing = _worktree_paths(git)
    start = git.resolve("HEAD")
    plan: list[tuple[str, Path, str, bool]] = []
    for k in range(n):
        branch = _branch_name(git, ground, f"{tag}-gpu{k}")
        path = parent / f"{git.root.name}-{tag}-gpu{k}"
        has_branch = git.ref_target(branch_ref(branch)) is not None
        if has_branch and existing.get(branch) != path:
            raise GitarError(f"branch {branch} already exists{' in ' + str(existing[branch]) if branch in existing else ''}; "
                             "pick another tag")
        if not has_branch and path.exists():
            raise GitarError(f"{path} already exists; move it away or pass --worktree-dir DIR")
        plan.append((branch, path, str(k), not has_branch))
    made: list[Worktree] = []
    for branch, path, device, fresh in plan:
        if fresh:
            git.run("worktree", "add", "--quiet", "-b", branch, str(path), start,
                    advice=f"could not create the worktree {path}")
        tree = Git.discover(path)
        _record_base(tree, branch, ground, fresh=fresh)
        if read_device(tree.gitdir) != device:
            write_device(tree.gitdir, device)
        made.append(Worktree(branch, path, device, fresh))
    _configure(git)
    return InitResult(branch=made[0].branch, created=any(w.created for w in made), warnings=_data_warnings(git, ground),
                      worktrees=made)


def _worktree_paths(git: Git) -> dict[str, Path]:
    """{branch: worktree path} of the clone's worktrees."""
    return {w.branch: w.path for w in git.worktrees() if w.branch is not None}


def _record_base(git: Git, branch: str, ground: Ground, *, fresh: bool) -> None:
    book = Ledger.of(git)
    if not book.exists():
        # The ledger starts here. Records an older gitar wrote are adopted (`accepted`): running
        # init is the user's act, as `gitar verify --accept` would be.
        trust.accept(git, None)
    tip = git.ref_target(branch_ref(branch))
    if tip is not None and (fresh or book.branch_tip(branch) is None):
        book.set_branch(branch, tip)
    if fresh:
        # A new branch of an old name: the base and data pin of the deleted one do not apply.
        pins.forget_data_pin(git, branch)
    if fresh or pins.base_commit(git, branch) is None:
        pins.record_base(git, branch, git.resolve("HEAD"))
    if ground.experiment.evaluate == integrity.HARNESS:
        integrity.pin_data(git, branch, ground)


def _branch_name(git: Git, ground: Ground, tag: str) -> str:
    if not tag.strip():
        raise GitarError("TAG is empty; name the run, e.g. `gitar init nov21`")
    branch = ground.experiment.branch_prefix + tag
    ok = git.run("check-ref-format", "--branch", branch, check=False).returncode == 0
    if not ok or any(c.isspace() for c in tag):
        raise GitarError(f"{tag!r} cannot be part of a branch name; use letters, digits, '-', '_' or '.'")
    return branch


def _check_installable(git: Git, *, files: bool = True) -> None:
    """What would make installing the hooks fail, said before init changes anything."""
    hooks_path = git.run("config", "--get", "core.hooksPath", check=False).stdout.strip()
    if hooks_path:
        raise GitarError(f"core.hooksPath is set ({hooks_path}), so pre-commit cannot install its hooks; "
                         "unset it with `git config --unset-all core.hooksPath` (and --global if set there)")
    for needed in presets.HOOK_FILES if files else ():
        if not (git.root / needed).exists():
            raise GitarError(f"{needed} is missing from the workspace; restore it from the template "
                             "(the hooks are how gitar runs each commit)")


def _install_hooks(git: Git) -> None:
    proc = subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=git.root, env=clean_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise GitarError(f"pre-commit install failed: {reason[-1] if reason else proc.returncode}",
                         ExitCode.INTERNAL)


def _data_warnings(git: Git, ground: Ground) -> list[str]:
    cache = ground.cache_dir
    val = cache / "data" / f"shard_{ground.data.val_shard:05d}.parquet"
    # prepare.py writes the tokenizer manifest last: its presence means the tokenizer is complete.
    manifest = cache / "tokenizer" / "manifest.json"
    upstream = eval_data.upstream_layout(cache)  # upstream's prepare.py: tokenizer.pkl and token_bytes.pt
    if val.exists() and (manifest.exists() or upstream):
        return []
    prepare = git.blob_at(git.resolve("HEAD"), "prepare.py") or b""
    if b"--source" in prepare:  # gitar's prepare.py: it can also build the shards offline
        how = "`python prepare.py` (or `python prepare.py --source DIR` offline)"
    else:  # upstream's (or a fork's): it downloads, in the repository's own environment
        how = "prepare.py in the repository's environment (upstream's: `uv run prepare.py`)"
    return [f"data is not prepared in {cache}: run {how} before the first experiment"]


# ---------------------------------------------------------------------------
# Adopting a karpathy/autoresearch clone: gitar's files added and committed on the current branch
# ---------------------------------------------------------------------------

# Upstream's files that say "this is an autoresearch repository": its own train.py and prepare.py.
UPSTREAM_FILES = ("train.py", "prepare.py")
PROGRAM_FILE = "program.md"
ADOPT_MESSAGE = ("gitar: add ground.json, hooks/gitar-hook, .pre-commit-config.yaml and the program.md loop section\n\n"
                 "Written by `gitar init`: the experiment loop runs through git hooks (gitar try) from here on;\n"
                 "train.py, prepare.py and the data cache are unchanged.\n")


@dataclass(frozen=True)
class Adoption:
    """What init writes into an upstream-style repository (path -> content) before it makes the branch."""

    files: dict[str, bytes]
    ground: Ground
    branch: str  # the branch the files are committed on
    notes: list[str]  # said to the user with the plan (why smoke is off)
    commit: str = ""


def plan_adoption(git: Git, tag: str, *, worktrees: int = 0) -> Adoption | None:
    """None when the repository already has gitar's files; else everything adopt() will write, checked.

    Every refusal happens here, before a file, commit, branch or ref changes.
    """
    root = git.root
    if (root / GROUND_FILE).exists():
        return None
    missing = [f for f in UPSTREAM_FILES if not (root / f).is_file()]
    if missing:
        raise GitarError(f"{GROUND_FILE}: not found in {root}, and {missing[0]} is missing too, so this is neither a "
                         "gitar workspace nor an autoresearch clone; run gitar init in one (or `gitar demo`)")
    present = [f for f in presets.HOOK_FILES if (root / f).exists()]
    if present:
        raise GitarError(f"{present[0]} exists but {GROUND_FILE} does not: a half set-up workspace; "
                         f"remove {present[0]} (gitar init writes it) or restore {GROUND_FILE}")
    branch = git.current_branch()
    if branch is None:
        raise GitarError("HEAD is detached; `git switch` to the branch gitar's files should be committed on, "
                         "then run gitar init again")
    if (op := git.operation_in_progress()) is not None:
        raise GitarError(f"{op} is in progress; finish or abort it first")
    if git.run("diff", "--cached", "--quiet", check=False).returncode != 0:
        raise GitarError("the index has staged changes; commit or unstage them first (gitar init commits only its own files)")
    if git.run("var", "GIT_COMMITTER_IDENT", check=False).returncode != 0:
        raise GitarError("git has no identity for the commit gitar init makes; set `git config user.name` and "
                         "`git config user.email`")
    _check_installable(git, files=False)
    program = root / PROGRAM_FILE
    if program.exists() and git.run("diff", "--quiet", "--", PROGRAM_FILE, check=False).returncode != 0:
        raise GitarError(f"{PROGRAM_FILE} has uncommitted changes; commit or stash them first "
                         "(gitar init appends its section and commits it)")
    src = presets.template_dir()
    train = (root / "train.py").read_text(encoding="utf-8", errors="replace")
    shipped = read_json_object(src / GROUND_FILE)
    prepare = (root / "prepare.py").read_text(encoding="utf-8", errors="replace")
    obj = presets.upstream_ground(shipped, has_model_json=(root / MODEL_FILE).is_file(), train_source=train,
                                  prepare_source=prepare)
    ground = parse_ground(obj, root / GROUND_FILE)  # validated before it is written
    if worktrees == 0:
        name = _branch_name(git, ground, tag)
        if git.ref_target(branch_ref(name)) is not None:
            raise GitarError(f"branch {name} already exists; pick another tag")
    files: dict[str, bytes] = {GROUND_FILE: (json.dumps(obj, indent=2) + "\n").encode()}
    for rel in presets.HOOK_FILES:
        files[rel] = (src / rel).read_bytes()
    text = program.read_text(encoding="utf-8") if program.exists() else ""
    if presets.PROGRAM_BEGIN not in text:
        files[PROGRAM_FILE] = (text.rstrip("\n") + "\n" + presets.PROGRAM_SECTION if text else
                               presets.PROGRAM_SECTION.lstrip("\n")).encode()
    notes = [] if ground.experiment.smoke else [presets.SMOKE_OFF_WHY]
    return Adoption(files=files, ground=ground, branch=branch, notes=notes)


def adopt(git: Git, plan: Adoption) -> None:
    """Say what will be added, write it, and commit it on the current branch (undone on failure)."""
    print(f"gitar: {git.root} has no gitar files; adding them and committing on {plan.branch}:")
    for rel in plan.files:
        print(f"  {'append a marked section to' if rel == PROGRAM_FILE and (git.root / rel).exists() else 'add'} {rel}")
    for note in plan.notes:
        print(f"  note: {note}")
    before = git.resolve("HEAD")
    old: dict[str, bytes | None] = {rel: (git.root / rel).read_bytes() if (git.root / rel).exists() else None
                                    for rel in plan.files}
    try:
        for rel, content in plan.files.items():
            path = git.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            if rel.startswith("hooks/"):
                path.chmod(0o755)
        git.run("add", "--", *plan.files)
        git.run("commit", "--quiet", "--no-verify", "-m", ADOPT_MESSAGE, advice="the commit of gitar's files failed")
    except BaseException:
        git.run("reset", "--quiet", before, "--", *plan.files, check=False)
        for rel, was in old.items():
            if was is None:
                (git.root / rel).unlink(missing_ok=True)
            else:
                (git.root / rel).write_bytes(was)
        _remove_empty_hooks_dir(git)
        raise
    object.__setattr__(plan, "commit", git.resolve("HEAD"))


def _unadopt(git: Git, before: str) -> None:
    """init failed after the adoption commit: the branch, index and files back to where they were."""
    git.run("reset", "--quiet", "--keep", before, check=False)
    _remove_empty_hooks_dir(git)


def _remove_empty_hooks_dir(git: Git) -> None:
    hooks = git.root / "hooks"
    if hooks.is_dir() and not any(hooks.iterdir()):
        hooks.rmdir()
