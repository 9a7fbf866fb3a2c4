"""`gitar demo [DIR]`: the whole loop on a CPU with no network, in a few minutes.

It builds a research workspace in DIR from this project's own files with the tiny CPU
preset, prepares the embedded corpus (standard-library docstrings as parquet shards),
then drives the loop the way an agent would: `gitar init`, the baseline with
`gitar run`, one experiment through `gitar try`, one idea the preflight refuses (then
undone, so the workspace ends clean), and finally the history as git's own tools show it
(`git attempts`, `git log --notes`). Every step is a real subprocess in the new workspace,
so what the demo shows is exactly what a user gets; each stage says what it does before it
starts and how long it took when it ends, and a command's output is shown as it comes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gitar.config.schema import read_json_object
from gitar.demo import corpus
from gitar.demo.presets import TEMPLATE_FILES, cpu_ground, cpu_model, template_dir
from gitar.errors import ExitCode, GitarError
from gitar.host import sandbox
from gitar.shared import environment

GITIGNORE = "# prepared data and tokenizer (ground.json data.cache_dir)\n/data/\n/corpus/\n__pycache__/\n"

# The experiment the demo tries: one hyperparameter, the kind of change an agent makes first.
EXPERIMENT = ("matrix_lr", 0.06, "raise the Muon learning rate 0.04 -> 0.06")
# The idea the preflight refuses: a shape bug the CPU smoke step catches in seconds.
SHAPE_BUG = ("self.c_proj = nn.Linear(4 * ", "self.c_proj = nn.Linear(3 * ")


def default_directory(parent: Path) -> Path:
    """./gitar-demo, or the first free ./gitar-demo-N: running the README command twice just works."""
    for n in range(1, 1000):
        candidate = parent / ("gitar-demo" if n == 1 else f"gitar-demo-{n}")
        if not candidate.exists() or not any(candidate.iterdir()):
            return candidate
    raise GitarError(f"{parent} holds 999 gitar-demo directories; remove some or give a DIR")


def build_workspace(dest: Path, *, unconfined: bool = False) -> None:
    """The workspace files with the CPU preset, as a new git repository on main.

    unconfined: this machine has no sandbox, so the demo's ground.json says "sandbox": "off"
    explicitly (gitar refuses to run experiments without one otherwise).
    """
    src = template_dir()
    for rel in TEMPLATE_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
    ground = cpu_ground(read_json_object(src / "ground.json"))
    if unconfined:
        ground["experiment"]["sandbox"] = sandbox.OFF
    (dest / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    (dest / "model.json").write_text(json.dumps(cpu_model(), indent=2) + "\n")
    (dest / ".gitignore").write_text(GITIGNORE)


class Stages:
    """The demo's stages, each announced before it starts and timed when it ends.

    A stage line says what is happening and, for the slow ones, how long it usually takes, so
    a user watching a silent training run knows it is expected: `==> [3/7] the baseline … (a
    CPU run: … ~1 min on an idle 2-core machine …)`. When the stage ends,
    `    done in 41.2s (total 58.0s)`.
    """

    def __init__(self, count: int, echo: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self.echo = echo
        self.clock = clock
        self.t0 = clock()
        self.n = 0

    @contextlib.contextmanager
    def stage(self, title: str, expect: str = "") -> Iterator[None]:
        self.n += 1
        self.echo(f"\n==> [{self.n}/{self.count}] {title}" + (f" ({expect})" if expect else ""))
        started = self.clock()
        yield
        now = self.clock()
        self.echo(f"    done in {now - started:.1f}s (total {now - self.t0:.1f}s)")

    def total(self) -> float:
        return self.clock() - self.t0


STAGES = 7


def run_demo(dest: Path, echo: Callable[[str], None] = print) -> None:
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise GitarError(f"{dest} exists and is not empty; give `gitar demo` a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    env = _demo_env()
    stages = Stages(STAGES, echo)
    stage = stages.stage

    def sh(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        """Run one command in the workspace, its output shown line by line as it comes."""
        echo("$ " + " ".join(_quote(a) for a in args))
        proc = subprocess.Popen(list(args), cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        out = []
        for line in proc.stdout:
            out.append(line)
            echo("  " + line.rstrip("\n"))
        code = proc.wait()
        if code not in ok:
            raise GitarError(f"demo step failed ({' '.join(args[:3])}…, exit {code}); "
                             f"the workspace is left in {dest} to inspect", ExitCode.INTERNAL)
        return "".join(out)

    py = sys.executable
    gitar = (py, "-m", "gitar")
    with stage(f"building a CPU workspace in {dest}"):
        try:
            sandbox.require()
            unconfined = False
        except GitarError as e:
            # A demo shows the loop; on a machine without user namespaces it runs train.py unconfined,
            # says so, and writes it into ground.json, where a real workspace would have to say it too.
            echo(f"  {e.message.split('; install')[0]}: this demo runs train.py unconfined "
                 '(ground.json experiment.sandbox "off"; every record says so)')
            unconfined = True
        build_workspace(dest, unconfined=unconfined)
        corpus_dir = dest / "corpus"
        files = corpus.write_corpus(corpus_dir)
        echo(f"  embedded corpus: {len(files)} parquet files of standard-library docstrings in {corpus_dir}")

    with stage("preparing data and tokenizer offline (python prepare.py --source corpus)",
               "tokenizer training, ~10 s idle"):
        sh(py, "prepare.py", "--source", str(corpus_dir))

    with stage("a git repository for the workspace, and an experiment branch (gitar init)",
               "installs the pre-commit hooks, a few seconds"):
        sh("git", "init", "-q", "-b", "main")
        sh("git", "add", "-A")
        sh("git", "commit", "-q", "-m", "gitar demo workspace (CPU preset)")
        sh(*gitar, "init", "demo")

    # The slow stages say how long they take: the result line comes only at the end of a run.
    training = ("a CPU run: a smoke step, 20 s of training, start-up and the evaluation; ~1 min on an idle "
                "2-core machine, 2-3 min on a busy one")
    with stage("the baseline: train the unmodified train.py (gitar run)", training):
        sh(*gitar, "run", ok=(0, 1))

    with stage(f"an experiment: {EXPERIMENT[2]} (gitar try)", training):
        model = json.loads((dest / "model.json").read_text())
        model["optimization"][EXPERIMENT[0]] = EXPERIMENT[1]
        (dest / "model.json").write_text(json.dumps(model, indent=2) + "\n")
        sh(*gitar, "try", EXPERIMENT[2], ok=(0, 1))

    with stage("a broken idea: a shape bug in the MLP, refused by the preflight before any training",
               "the CPU smoke step, ~10 s idle"):
        train = (dest / "train.py").read_text()
        if SHAPE_BUG[0] not in train:
            raise GitarError("train.py has no MLP projection to break; the demo needs the shipped train.py",
                             ExitCode.INTERNAL)
        (dest / "train.py").write_text(train.replace(SHAPE_BUG[0], SHAPE_BUG[1], 1))
        sh(*gitar, "try", "shrink the MLP projection input", ok=(2,))
        # A refusal changes nothing (index, branch): the broken edit is only in the work tree, where
        # the agent would fix it. The demo drops it instead, so the workspace it hands over is clean
        # and the user's first `gitar try` is about their own change.
        echo("  undoing the refused idea: the refusal left the index and the branch as they were, "
             "so git checkout restores the committed train.py")
        sh("git", "checkout", "--", "train.py")
        left = sh("git", "status", "--porcelain", "--untracked-files=no")
        if left.strip():
            raise GitarError(f"the demo workspace is not clean after undoing the refused idea ({left.strip()}); "
                             f"it is left in {dest} to inspect", ExitCode.INTERNAL)

    with stage("the history in git: every attempt, kept or not (git attempts), then the kept lineage (git log)"):
        sh("git", "attempts")
        sh("git", "log", "--notes", "-3", "autoresearch/demo")
    echo(f"\ndone in {stages.total():.0f}s. Explore: cd {dest} && gitar status && git attempts && gitar log")


def _demo_env() -> dict[str, str]:
    env = environment(prefixes=("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX"))
    # The demo must commit even on a machine where git has no identity configured.
    env.setdefault("GIT_AUTHOR_NAME", "gitar demo")
    env.setdefault("GIT_AUTHOR_EMAIL", "demo@gitar.invalid")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:*" for c in arg) else repr(arg)
