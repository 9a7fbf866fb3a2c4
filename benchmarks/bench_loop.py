"""gitar's own overhead per experiment, and how fast a broken idea is refused.

    python benchmarks/bench_loop.py [--runs 5] [--history 10 10000] [--real] [--through-hooks]

Overhead = wall time of the whole `gitar try` minus the training process's own wall
time (recorded in the record as wall_seconds). The trainer is a fake that prints a
summary at once, so what remains is gitar: the CLI, the preflight and its (fake) smoke
step, git commit, the run's bookkeeping and the record. With the shipped hook config
`gitar try` runs both hook stages itself; --through-hooks also times a workspace with a
user's own hook, where the commit goes through the pre-commit framework and both hooks.
History of N prior attempts is synthesised with git fast-import: kept attempts on the
branch, discarded ones beside it, each with a note and an attempt ref, as gitar leaves them.
Also: a syntax error refused (median seconds), and with --real, a shape error refused by
the smoke step of the real train.py with the shipped model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.trainers import fake_train  # noqa: E402
from testing.workspace import Workspace, make_workspace  # noqa: E402


def hermetic_env(home: Path) -> None:
    os.environ.update({
        "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "PRE_COMMIT_HOME": str(home / ".pre-commit"),
        "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
    })
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")


def synthesise_history(ws: Workspace, n: int) -> None:
    """n prior attempts: every 10th kept (the branch advances), the rest discarded beside it."""
    branch = "refs/heads/autoresearch/t1"
    base = ws.git("rev-parse", branch).stdout.strip()
    lines: list[str] = []
    tip = base
    records: list[tuple[int, str]] = []
    when = 1_700_000_000
    for i in range(n):
        mark = i + 1
        keep = i % 10 == 0
        # An agent-owned file, as a real attempt changes: a commit touching anything else is rejected.
        body = (fake_train(1.0) + f"# attempt {i}\n").encode()
        msg = f"attempt {i}".encode()
        lines.append(f"commit refs/gitar/bench/{i % 2}")
        lines.append(f"mark :{mark}")
        lines.append(f"committer Bench <bench@example.com> {when + i} +0000")
        lines.append(f"data {len(msg)}")
        lines.append(msg.decode())
        lines.append(f"from {tip}" if tip != "" else "")
        lines.append(f"M 100644 inline train.py\ndata {len(body)}\n{body.decode()}")
        lines.append("")
        status = "keep" if keep else "discard"
        rec = {"status": status, "val_bpb": 1.0 - i * 1e-5, "description": f"attempt {i}",
               "commit": "", "branch": "autoresearch/t1", "kind": "attempt", "run_id": f"bench{i}",
               "schema": 1}
        records.append((mark, json.dumps(rec)))
        if keep:
            lines.append(f"reset {branch}\nfrom :{mark}\n")
            tip = f":{mark}"
    lines.append(f"commit refs/notes/gitar\ncommitter Bench <bench@example.com> {when} +0000\ndata 5\nbench")
    for m, rec in records:
        lines.append(f"N inline :{m}\ndata {len(rec.encode()) + 1}\n{rec}\n")
    lines.append("")
    lines.append("checkpoint\n")
    stream = "\n".join(lines)
    marks = ws.root / ".git" / "bench-marks"
    subprocess.run(["git", "fast-import", "--quiet", f"--export-marks={marks}"], cwd=ws.root,
                   input=stream.encode(), check=True)
    refs = []
    for line in marks.read_text().splitlines():
        _, sha = line.split()
        refs.append(f"create refs/gitar/attempts/{sha} {sha}")
    subprocess.run(["git", "update-ref", "--stdin"], cwd=ws.root, input="\n".join(refs) + "\n", text=True, check=True)
    subprocess.run(["git", "pack-refs", "--all"], cwd=ws.root, check=True)
    ws.git("reset", "-q", "--hard", "autoresearch/t1")
    for r in ("refs/gitar/bench/0", "refs/gitar/bench/1"):
        ws.git("update-ref", "-d", r)
    # Written behind gitar's back: adopted into its ledger as a user would adopt an old notebook.
    assert ws.gitar("verify", "--accept").returncode in (0, 1)


def one_try(ws: Workspace, value: float) -> float:
    ws.write_train(value)
    t0 = time.perf_counter()
    proc = ws.gitar("try", f"bench {value}", "--json")
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"gitar try failed: {proc.stderr}")
    rec = json.loads(proc.stdout)
    return elapsed - float(rec["wall_seconds"])


def measure_overhead(tmp: Path, history: int, runs: int, *, through_hooks: bool = False) -> float:
    ws = make_workspace(tmp / f"ws{history}{'-hooks' if through_hooks else ''}")
    if through_hooks:
        # A user's own hook in the config: `gitar try` then commits through the pre-commit framework.
        ws.add_user_hook()
    os.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    if history:
        synthesise_history(ws, history)
    assert ws.gitar("run").returncode in (0, 1)
    samples = [one_try(ws, 2.0 + i * 0.01) for i in range(runs)]  # discards: the reset path, the costlier one
    return statistics.median(samples)


def measure_refusal(tmp: Path, runs: int) -> float:
    ws = make_workspace(tmp / "wsref")
    os.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    samples = []
    for i in range(runs):
        (ws.root / "train.py").write_text(fake_train(0.5) + f"\ndef broken{i}(:\n")
        t0 = time.perf_counter()
        proc = ws.gitar("try", "syntax error")
        samples.append(time.perf_counter() - t0)
        assert proc.returncode == 2 and "syntax error" in proc.stderr, proc.stderr
    return statistics.median(samples)


def measure_smoke_shape_error(tmp: Path, runs: int) -> float:
    """The real train.py and the shipped model.json, with a shape bug the smoke step must catch."""
    ws = make_workspace(tmp / "wssmoke")
    shutil.copy(ROOT / "train.py", ws.root / "train.py")
    shutil.copy(ROOT / "prepare.py", ws.root / "prepare.py")
    ws.git("add", "-A")
    ws.git("commit", "-qm", "real trainer")
    os.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    source = (ROOT / "train.py").read_text()
    broken = source.replace("self.c_proj = nn.Linear(4 * ", "self.c_proj = nn.Linear(3 * ", 1)
    if broken == source:
        raise SystemExit("could not inject a shape error into train.py (MLP c_proj not found)")
    samples = []
    for i in range(runs):
        (ws.root / "train.py").write_text(broken + f"\n# variant {i}\n")
        t0 = time.perf_counter()
        proc = ws.gitar("try", "shape error")
        samples.append(time.perf_counter() - t0)
        assert proc.returncode == 2 and "smoke step failed" in proc.stderr, proc.stderr
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--history", type=int, nargs="+", default=[10, 10_000])
    ap.add_argument("--real", action="store_true", help="also time the smoke step of the real train.py")
    ap.add_argument("--through-hooks", action="store_true",
                    help="also time a try that commits through the hooks (a user's own hook configured)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitar-bench-") as d:
        tmp = Path(d)
        home = tmp / "home"
        home.mkdir()
        hermetic_env(home)
        results = {}
        for n in args.history:
            results[n] = measure_overhead(tmp, n, args.runs)
            print(f"overhead per experiment, {n:>6} prior attempts: median {results[n]:.3f} s over {args.runs} tries")
        if len(args.history) >= 2:
            lo, hi = args.history[0], args.history[-1]
            print(f"ratio {hi} / {lo} attempts: {results[hi] / results[lo]:.2f}x")
        if args.through_hooks:
            hooked = measure_overhead(tmp, args.history[0], args.runs, through_hooks=True)
            print(f"overhead through the hooks, {args.history[0]:>6} prior attempts: median {hooked:.3f} s "
                  f"over {args.runs} tries")
        print(f"syntax error refused in: median {measure_refusal(tmp, args.runs):.3f} s")
        if args.real:
            print(f"shape error refused by the smoke step (real train.py, shipped model.json): "
                  f"median {measure_smoke_shape_error(tmp, args.runs):.2f} s")


if __name__ == "__main__":
    main()
