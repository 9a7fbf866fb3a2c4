"""A real gitar workspace in a throwaway repository, with the fake trainer (testing/trainers.py).

The workspace's ground.json sets experiment.evaluate "reported", so gitar records the
printed number instead of evaluating an exported model. Everything else is real: git,
the pre-commit framework, the installed hooks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testing.hermetic import REPO_ROOT
from testing.trainers import fake_train

# A user's own pre-commit hook, appended to .pre-commit-config.yaml: with it, `gitar try` commits
# through the hooks (gitar/loop/own_hooks.py) and the marker file shows the hook ran.
USER_HOOK_CONFIG = """\
  - repo: local
    hooks:
      - id: user-marker
        name: a user's own hook
        entry: sh -c 'echo ran >> .git/user-hook-ran'
        language: system
        pass_filenames: false
        always_run: true
        stages: [pre-commit]
"""


def trainer_processes(root: Path) -> list[int]:
    """Pids of live processes started for runs in the workspace at root: the sandbox and the
    trainer inside it carry GITAR_WORKSPACE in their environment. (The trainer cannot leave a
    pid file anywhere a test could read: the sandbox lets it write only its own snapshot.)"""
    marker = f"GITAR_WORKSPACE={root}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


@dataclass
class Workspace:
    root: Path

    def git(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = dict(os.environ)
        full.update(env or {})
        proc = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True, env=full)
        if check and proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def gitar(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full = dict(os.environ)
        full.update(env or {})
        return subprocess.run([sys.executable, "-m", "gitar", *args], cwd=self.root, capture_output=True,
                              text=True, env=full, timeout=timeout)

    def write_train(self, val_bpb: float = 1.0, mode: str = "ok", sleep_s: float = 0.0, *, body: str = "",
                    summary: dict[str, object] | None = None) -> None:
        """train.py: the fake trainer (testing/trainers.py fake_train, which says what each argument does)."""
        (self.root / "train.py").write_text(fake_train(val_bpb, mode, sleep_s, body=body, summary=summary))

    def add_user_hook(self) -> None:
        """Commit a user's own pre-commit hook (USER_HOOK_CONFIG): `gitar try` then goes through the hooks."""
        config = self.root / ".pre-commit-config.yaml"
        config.write_text(config.read_text() + USER_HOOK_CONFIG)
        self.git("commit", "-qam", "a user hook")

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").stdout.strip()

    def tip(self, branch: str = "autoresearch/t1") -> str:
        return self.git("rev-parse", f"refs/heads/{branch}").stdout.strip()

    def records(self, rev: str = "HEAD") -> list[dict[str, object]]:
        proc = self.git("notes", "--ref", "refs/notes/gitar", "show", rev, check=False)
        if proc.returncode != 0:
            return []
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def all_records(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        listing = self.git("notes", "--ref", "refs/notes/gitar", "list", check=False).stdout
        for line in listing.splitlines():
            _, commit = line.split()
            out.extend(self.records(commit))
        return out


def init_repo(root: Path, files: dict[str, str] | None = None, *, branch: str = "main",
              message: str = "workspace") -> Workspace:
    """A git repository at root (made if missing) with one commit: what root holds, plus `files`
    (name: text) written first. Every test repository with a history starts here; the bare and
    unborn repositories some tests refuse are made where those tests are."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    ws = Workspace(root)
    ws.git("init", "-q", "-b", branch)
    ws.git("add", "-A")
    ws.git("commit", "-q", "--allow-empty", "-m", message)
    return ws


def add_loop_files(root: Path) -> None:
    """What a gitar workspace holds beside the trainer and its configuration: the repository's
    pre-commit configuration and hooks, and a program.md."""
    shutil.copy(REPO_ROOT / ".pre-commit-config.yaml", root / ".pre-commit-config.yaml")
    shutil.copytree(REPO_ROOT / "hooks", root / "hooks")
    (root / "program.md").write_text("# program\n")


def make_workspace(root: Path, *, timeout_s: float = 30, budget_s: float = 1, smoke: bool = True) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    ground = json.loads((REPO_ROOT / "ground.json").read_text())
    ground["training"]["mode"] = "cpu"
    ground["training"]["time_budget_s"]["cpu"] = budget_s
    ground["experiment"]["timeout_s"] = timeout_s
    ground["experiment"]["smoke"] = smoke
    # The fake trainer prints its number and exports no model (there is no data to evaluate on):
    # the escape hatch for trainers without a torch model. tests/integrity covers the harness path.
    ground["experiment"]["evaluate"] = "reported"
    ground["data"]["cache_dir"] = "data"
    (root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    shutil.copy(REPO_ROOT / "model.json", root / "model.json")
    add_loop_files(root)
    return init_repo(root, {"prepare.py": '"""The evaluation harness (stand-in for loop tests)."""\n',
                            ".gitignore": "data/\n", "train.py": fake_train(1.0)})


def ok(proc: object) -> str:
    return f"stdout={getattr(proc, 'stdout', '')!r} stderr={getattr(proc, 'stderr', '')!r}"


# judged(rule, ...) of tests/judge/conftest.py: a workspace with that keep rule.
JudgedWorkspace = Callable[..., Workspace]
