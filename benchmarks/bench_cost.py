"""The cost of one experiment, taken apart: a whole `gitar try` beside upstream's manual loop, on the CPU preset.

    python benchmarks/bench_cost.py [--runs 3] [--budget-s 300] [--keep DIR]

One workspace, built as `gitar demo` builds it (the CPU preset, the embedded corpus), then
alternately, so both sides see the same machine load:
- gitar: `gitar try "desc" --json` on the experiment branch (a comment added to train.py each
  time, so the model and the seed are the baseline's). Its phases come from gitar's clock (the
  record's `timings`, its trainer start `started`) and from train.py's own lines (Startup, Training
  loop, Export, training_seconds, total_seconds).
- upstream: the loop of upstream's program.md by hand, on a branch without hooks: `git commit`,
  `python train.py > run.log` (which evaluates in-process), grep the numbers, append results.tsv,
  `git reset --hard HEAD~1` unless val_bpb improved.
Time outside training = wall time - training_seconds. The projection puts the measured fixed
costs beside a 5-minute budget: training share = budget / (budget + outside). Upstream's own
H100 figure is 300 s of 325.9 s total, 92 %.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gitar import shared  # noqa: E402
from gitar.commands.demo import build_workspace  # noqa: E402
from gitar.config.schema import read_json_object  # noqa: E402
from gitar.demo import corpus  # noqa: E402
from gitar.errors import GitarError  # noqa: E402
from gitar.host import sandbox  # noqa: E402

BRANCH_TAG = "bench"
UPSTREAM_BRANCH = "upstream"
UPSTREAM_SHARE = 300 / 325.9  # upstream's README: training_seconds 300 of total_seconds 325.9 on an H100
NO_HOOKS = ("-c", f"core.hooksPath={os.devnull}")  # upstream has no hooks: its commit is a plain commit

# The rows of the table, in the order an experiment spends them: (key, label).
GITAR_PHASES = (
    ("cli_s", "gitar CLI, checks, commit (before the smoke step and after it)"),
    ("smoke_s", "smoke step (preflight, sandboxed)"),
    ("setup_s", "snapshot, sandbox set-up"),
    ("interpreter_s", "trainer: interpreter, imports, exit, sandbox"),
    ("startup_s", "trainer: start-up (data, model, first batch)"),
    ("warmup_s", "trainer: untimed warm-up steps"),
    ("training_s", "trainer: training (training_seconds)"),
    ("finish_s", "trainer: export / in-process evaluation"),
    ("handoff_s", "copy + hash of export and evaluation data"),
    ("evaluator_s", "harness evaluation (own process, causality probe)"),
    ("bookkeeping_s", "judging, record, notes, branch move"),
)
UPSTREAM_PHASES = (
    ("commit_s", "git commit"),
    ("interpreter_s", "trainer: interpreter, imports, exit"),
    ("startup_s", "trainer: start-up (data, model, first batch)"),
    ("warmup_s", "trainer: untimed warm-up steps"),
    ("training_s", "trainer: training (training_seconds)"),
    ("finish_s", "trainer: export / in-process evaluation"),
    ("grep_s", "grep the log, append results.tsv"),
    ("reset_s", "git reset --hard (not improved)"),
)


# ---------------------------------------------------------------------------
# Taking a run apart (pure functions: tests/bench/test_bench_cost.py checks them)
# ---------------------------------------------------------------------------


def trainer_lines(log: str) -> dict[str, float]:
    """train.py's own timing lines: Startup, Training loop, Export/Evaluation and the summary's seconds."""
    found: dict[str, float] = {}
    patterns = {"startup": r"^Startup: ([\d.]+)s$", "loop": r"^Training loop: ([\d.]+)s$",
                "finish": r"^(?:Export|Evaluation): ([\d.]+)s$", "training": r"^training_seconds: ([\d.]+)$",
                "total": r"^total_seconds: ([\d.]+)$", "val_bpb": r"^val_bpb: ([\d.]+)$"}
    for line in log.splitlines():
        for key, pattern in patterns.items():
            m = re.match(pattern, line.strip())
            if m and key not in found:  # the trainer's first: an evaluator's val_bpb comes later in gitar's log
                found[key] = float(m.group(1))
    missing = {"startup", "loop", "finish", "training", "total"} - found.keys()
    if missing:
        raise ValueError(f"the trainer's log lacks {', '.join(sorted(missing))}; is this train.py from this checkout?")
    return found


def _trainer_phases(lines: Mapping[str, float], process_s: float) -> dict[str, float]:
    return {
        "interpreter_s": process_s - lines["total"],
        "startup_s": lines["startup"],
        "warmup_s": lines["loop"] - lines["training"],
        "training_s": lines["training"],
        "finish_s": lines["total"] - lines["startup"] - lines["loop"],
    }


def gitar_phases(t0: float, wall_s: float, record: Mapping[str, object], log: str) -> dict[str, float]:
    """One `gitar try` taken apart: t0 (epoch seconds) when it was started, its wall time, record, log."""
    timings = record.get("timings")
    if not isinstance(timings, dict):
        raise ValueError("the record has no timings; is gitar from this checkout?")
    started = dt.datetime.fromisoformat(str(record["started"])).timestamp()
    before_trainer = started - t0  # CLI + checks + smoke + commit + setup
    smoke, setup = float(timings.get("smoke_s", 0.0)), float(timings["setup_s"])
    phases = {"cli_s": before_trainer - smoke - setup, "smoke_s": smoke, "setup_s": setup,
              **_trainer_phases(trainer_lines(log), float(timings["trainer_s"])),
              "handoff_s": float(timings.get("handoff_s", 0.0)), "evaluator_s": float(timings.get("evaluator_s", 0.0))}
    phases["bookkeeping_s"] = wall_s - sum(phases.values())
    phases["wall_s"] = wall_s
    return phases


def upstream_phases(commit_s: float, trainer_s: float, log: str, grep_s: float, reset_s: float) -> dict[str, float]:
    phases = {"commit_s": commit_s, **_trainer_phases(trainer_lines(log), trainer_s), "grep_s": grep_s,
              "reset_s": reset_s}
    phases["wall_s"] = sum(phases.values())
    return phases


def outside_training(phases: Mapping[str, float]) -> float:
    return phases["wall_s"] - phases["training_s"]


def training_share(budget_s: float, outside_s: float) -> float:
    """The share of wall time spent training when a run trains budget_s and costs outside_s besides."""
    return budget_s / (budget_s + outside_s)


def medians(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def table(gitar: Sequence[Mapping[str, float]], upstream: Sequence[Mapping[str, float]], budget_s: float) -> str:
    g, u = medians(gitar), medians(upstream)
    rows = [f"{'phase (median seconds)':58s} {'gitar':>8s} {'upstream':>9s}"]
    for key, label in GITAR_PHASES:
        other = u.get(key) if key in dict(UPSTREAM_PHASES) else None
        rows.append(f"{label:58s} {g[key]:8.2f} {other if other is not None else float('nan'):9.2f}"
                    .replace("nan", "  -"))
    for key, label in UPSTREAM_PHASES:
        if key not in dict(GITAR_PHASES):
            rows.append(f"{label:58s} {'-':>8s} {u[key]:9.2f}")
    rows.append(f"{'wall time per experiment':58s} {g['wall_s']:8.2f} {u['wall_s']:9.2f}")
    g_out = statistics.median(outside_training(r) for r in gitar)
    u_out = statistics.median(outside_training(r) for r in upstream)
    rows.append(f"{'outside training (wall - training_seconds)':58s} {g_out:8.2f} {u_out:9.2f}")
    rows.append(f"ratio outside training, gitar / upstream: {g_out / u_out:.2f}x (goal <= 1.1x)")
    rows.append(f"training share projected to a {budget_s:g} s budget: gitar {100 * training_share(budget_s, g_out):.1f} %, "
                f"upstream-style here {100 * training_share(budget_s, u_out):.1f} %, upstream on an H100 "
                f"{100 * UPSTREAM_SHARE:.1f} %")
    # The trainer's interpreter, start-up and warm-up steps are the same code on both sides, yet they
    # swing with the load of a shared machine: the phases that differ say what gitar itself adds.
    shared = ("interpreter_s", "startup_s", "warmup_s", "training_s")
    g_own = sum(v for k, v in g.items() if k not in shared and k != "wall_s")
    u_own = sum(v for k, v in u.items() if k not in shared and k != "wall_s")
    rows.append(f"phases that differ (all but the trainer's interpreter, start-up, warm-up, training): "
                f"gitar {g_own:.2f} s, upstream {u_own:.2f} s")
    extra = g_out - u_out
    rows.append(f"gitar's extra per experiment: {extra:.2f} s; on upstream's H100 run (300 of 325.9 s) that is a share "
                f"of {100 * 300 / (325.9 + extra):.1f} % if the extra stayed as measured here")
    return "\n".join(rows)


# ---------------------------------------------------------------------------
# Driving both loops
# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = shared.environment(prefixes=("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX", "GITAR_"))
        self.env.update({"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@gitar.invalid",
                         "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@gitar.invalid",
                         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
        self.best: float | None = None  # upstream's best val_bpb so far (results.tsv)

    def sh(self, *args: str, ok: tuple[int, ...] = (0,), stdout: int | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), cwd=self.root, env=self.env, text=True,
                              stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode not in ok:
            raise SystemExit(f"{' '.join(args[:4])}… failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def gitar(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        return self.sh(sys.executable, "-m", "gitar", *args, ok=ok)

    def build(self) -> None:
        try:
            sandbox.require()
            unconfined = False
        except GitarError as e:  # as `gitar demo` does: measured without one, and said so
            print(f"{e.message.split('; install')[0]}: gitar's side runs train.py unconfined", flush=True)
            unconfined = True
        build_workspace(self.root, unconfined=unconfined)
        # A busy machine can take minutes for the CPU preset's warm-up steps: the benchmark measures
        # the cost of an experiment, not the preset's timeout or allowance (a rejected run has no phases).
        ground = read_json_object(self.root / "ground.json")
        ground["experiment"]["timeout_s"] = 1800
        ground["training"]["allowance_s"]["cpu"] = 1200
        (self.root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
        files = corpus.write_corpus(self.root / "corpus")
        print(f"workspace {self.root}: CPU preset, {len(files)} corpus files", flush=True)
        self.sh(sys.executable, "prepare.py", "--source", str(self.root / "corpus"))
        self.sh("git", "init", "-q", "-b", "main")
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-q", "-m", "bench workspace (CPU preset)")
        self.sh("git", "branch", UPSTREAM_BRANCH)
        self.gitar("init", BRANCH_TAG)
        t0 = time.time()
        self.gitar("run", ok=(0, 1))
        print(f"baseline measured by gitar run in {time.time() - t0:.1f} s", flush=True)

    def _edit(self, n: int, who: str) -> None:
        train = self.root / "train.py"
        train.write_text(train.read_text() + f"# bench {who} {n}\n")  # nothing the model or the seed sees

    def gitar_try(self, n: int) -> dict[str, float]:
        self.sh("git", "checkout", "-q", f"autoresearch/{BRANCH_TAG}")
        self._edit(n, "gitar")
        t0 = time.time()
        proc = self.gitar("try", f"bench {n}", "--json", ok=(0, 1))
        wall = time.time() - t0
        record = json.loads(proc.stdout)
        log = Path(str(record["log"])).read_text(errors="replace")
        return gitar_phases(t0, wall, record, log)

    def upstream_loop(self, n: int) -> dict[str, float]:
        self.sh("git", "checkout", "-q", UPSTREAM_BRANCH)
        self._edit(n, "upstream")
        t0 = time.time()
        self.sh("git", *NO_HOOKS, "commit", "-q", "-am", f"bench {n}")
        t1 = time.time()
        with open(self.root / "run.log", "w") as log:
            self.sh(sys.executable, "train.py", stdout=log.fileno())
        t2 = time.time()
        text = (self.root / "run.log").read_text(errors="replace")
        numbers = dict(re.findall(r"^(val_bpb|peak_vram_mb):\s+([\d.]+)$", text, re.M))
        val_bpb = float(numbers["val_bpb"])
        sha = self.sh("git", "rev-parse", "--short", "HEAD").stdout.strip()
        improved = self.best is None or val_bpb < self.best
        with open(self.root / "results.tsv", "a") as tsv:  # untracked, as upstream keeps it
            tsv.write(f"{sha}\t{val_bpb:.6f}\t{float(numbers['peak_vram_mb']) / 1024:.1f}\t"
                      f"{'keep' if improved else 'discard'}\tbench {n}\n")
        t3 = time.time()
        if improved:
            self.best = val_bpb
        else:
            self.sh("git", *NO_HOOKS, "reset", "-q", "--hard", "HEAD~1")
        t4 = time.time()
        return upstream_phases(t1 - t0, t2 - t1, text, t3 - t2, t4 - t3)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="experiments per side (default 3)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="budget to project the training share to")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="gitar-bench-cost-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp) / "ws"
        if root.exists() and any(root.iterdir()):
            ap.error(f"--keep {root}: exists and is not empty; give a new directory")
        root.mkdir(parents=True, exist_ok=True)
        bench = Bench(root)
        bench.build()
        # The upstream loop's first run sets its best (the baseline's role), as gitar's `gitar run` did.
        bench.upstream_loop(0)
        gitar_runs: list[dict[str, float]] = []
        upstream_runs: list[dict[str, float]] = []
        for n in range(1, args.runs + 1):
            for side, runs in (("gitar", gitar_runs), ("upstream", upstream_runs)):
                phases = bench.gitar_try(n) if side == "gitar" else bench.upstream_loop(n)
                runs.append(phases)
                print(f"run {n} {side:8s}: wall {phases['wall_s']:6.1f} s, outside training "
                      f"{outside_training(phases):6.1f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
        print()
        print(table(gitar_runs, upstream_runs, args.budget_s))
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
