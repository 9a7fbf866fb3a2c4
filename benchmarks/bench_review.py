"""How long the review commands take on a long history, against git's own floor.

    python benchmarks/bench_review.py [--runs 5] [--history 10 10000] [--full-records]

Each figure is the wall time of the whole command as a subprocess (`python -m gitar
...`, interpreter start included), median of --runs. The floor is git itself showing
the same records on the same history: `git log --notes=gitar --glob=refs/gitar/attempts/`
(every attempted commit with its JSON records), timed in the same rounds — each round runs
the floor and every command once, in turn, so a busy machine slows them alike — and each
command is given as a multiple of it (goal: at most 3×). `git attempts` (the alias
`gitar init` sets, one line per attempt) is timed too. The review commands keep what they
parsed in .git/gitar/cache/ (gitar/store/notes_cache.py): the first call after new records
parses only those, so the figures are for a cache in step with the notes, and the cold
call (no cache) is timed once beside them. gitar's modules are compiled to
bytecode first, as installing it does: where PYTHONDONTWRITEBYTECODE is set, each run
would otherwise compile every module edited since the last compile. The history is built with
bench_loop.synthesise_history: N prior attempts with notes and attempt refs, every
10th kept. Its records are short (a few fields); --full-records also rewrites every
note as a record of the size gitar writes (all fields, ~1 KB) with a start time,
and measures again, since parsing is most of the cost.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.hermetic import hermetic_process  # noqa: E402
from testing.history import synthesise_history  # noqa: E402
from testing.workspace import Workspace, make_workspace  # noqa: E402

COMMANDS = (("log",), ("log", "--tsv"), ("memory",), ("best",))
FLOOR = ("git", "log", "--notes=gitar", "--glob=refs/gitar/attempts/")
ALIAS = ("git", "attempts")
GOAL = 3.0  # each review command at most this many times git's floor


def build(tmp: Path, n: int) -> Workspace:
    ws = make_workspace(tmp / f"ws{n}")
    os.chdir(ws.root)
    assert ws.gitar("init", "t1").returncode == 0
    if n:
        synthesise_history(ws, n)
        assert ws.gitar("init", "t1").returncode == 0  # the repair run: the summary for `git attempts`
    return ws


def full_records(ws: Workspace) -> None:
    """Rewrite every note as a full-size record (all fields gitar writes, a start time), same verdicts."""
    repo = pygit2.Repository(str(ws.root))
    lines = ["commit refs/notes/gitar", "committer Bench <bench@example.com> 1700000000 +0000", "data 5", "bench",
             "from refs/notes/gitar^0"]
    for note in repo.notes("refs/notes/gitar"):  # type: ignore[call-arg]
        blob = repo.get(note.id)
        assert isinstance(blob, pygit2.Blob)
        rec = json.loads(blob.data.decode().splitlines()[0])
        rec["commit"] = str(note.annotated_id)
        body = json.dumps(_full_record(rec)) + "\n"
        lines.append(f"N inline {rec['commit']}\ndata {len(body.encode())}\n{body}")
    stream = "\n".join(lines) + "\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=ws.root, input=stream.encode(), check=True)


def _full_record(rec: dict[str, object]) -> dict[str, object]:
    i = int(str(rec["description"]).split()[-1])  # "attempt I"
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(1_700_000_000 + 360 * i))
    full: dict[str, object] = {
        "status": rec["status"], "val_bpb": rec["val_bpb"], "delta": -0.0001 if rec["status"] == "keep" else 0.0001,
        "best_before": rec["val_bpb"], "description": f"attempt {i}: a change described in one line, as agents do",
        "hypothesis": "a sentence on why this should help", "reason": "strict: compared with the best",
        "commit": rec["commit"], "branch": rec["branch"], "kind": "attempt", "run_id": f"{i:032x}",
        "schema": 1, "rule": "strict", "peak_vram_mb": 45060.2, "training_seconds": 300.1,
        "total_seconds": 325.9, "wall_seconds": 331.2, "mfu_percent": 39.8, "total_tokens_M": 499.6,
        "num_steps": 953, "num_params_M": 50.3, "depth": 8, "seed": 42, "started": started, "ended": started,
        "host": "gpu-node-01", "platform": {"device": "cuda", "dtype": "bfloat16", "attention": "fa3"},
        "harness_sha256": "2" * 64, "log": f"/home/researcher/workspace/.git/gitar/logs/{str(rec['commit'])[:12]}.log"}
    return full


def _gitar(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "gitar", *args]


def _once(ws: Workspace, argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ws.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def report(ws: Workspace, label: str, runs: int) -> None:
    # CPU time as well: on a busy machine the wall time measures the other processes too.
    cache = ws.root / ".git" / "gitar" / "cache" / "notes.marshal"
    cache.unlink(missing_ok=True)
    cold = _once(ws, _gitar(("best",)))  # parses every note and writes the cache
    argvs = {"git log --notes (floor)": list(FLOOR), "git attempts": list(ALIAS),
             **{"gitar " + " ".join(a): _gitar(a) for a in COMMANDS}}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():
            times[name].append(_once(ws, argv))
    floor = statistics.median(w for w, _ in times["git log --notes (floor)"])
    floor_cpu = statistics.median(c for _, c in times["git log --notes (floor)"])
    load = os.getloadavg()[0]
    print(f"{label} (load average {load:.1f}, medians of {runs} runs; cold gitar best, no cache: {cold[0]:.3f} s)")
    for name, samples in times.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        mark = "" if name.startswith("git ") else "  ok" if wall <= GOAL * floor else f"  over {GOAL:.0f}x"
        print(f"  {name:<24} {wall:.3f} s wall ({wall / floor:4.2f}x floor), {cpu:.3f} s CPU "
              f"({cpu / floor_cpu:4.2f}x){mark}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--history", type=int, nargs="+", default=[10, 10_000])
    ap.add_argument("--full-records", action="store_true", help="also measure with full-size records")
    args = ap.parse_args()
    compileall.compile_dir(ROOT / "gitar", quiet=1)
    with tempfile.TemporaryDirectory(prefix="gitar-bench-") as d:
        tmp = Path(d)
        home = tmp / "home"
        home.mkdir()
        hermetic_process(home)
        for n in args.history:
            ws = build(tmp, n)
            report(ws, f"{n:>6} attempts", args.runs)
            if args.full_records and n:
                full_records(ws)
                assert ws.gitar("init", "t1").returncode == 0
                report(ws, f"{n:>6} attempts, full-size records", args.runs)


if __name__ == "__main__":
    main()
