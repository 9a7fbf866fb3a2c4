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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.hermetic import hermetic_process  # noqa: E402
from testing.history import synthesise_history  # noqa: E402
from testing.trainers import fake_train  # noqa: E402
from testing.workspace import Workspace, make_workspace  # noqa: E402


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
        hermetic_process(home)
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
