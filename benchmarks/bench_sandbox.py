"""The sandbox's cost per experiment: its start-up and teardown, side by side with an unsandboxed run.

    python benchmarks/bench_sandbox.py [--runs 9] [--shard-mb 100]

One experiment confines two processes, the trainer and the evaluator, and copies the
evaluation files for the evaluator. Each row times the same trivial command (Python
printing a summary block, nothing imported) through gitar's runner, alternating the two
ways in one loop so both see the same machine load:
- "off": the runner as experiment.sandbox "off" runs it (its own process group, the log
  through gitar, no control group);
- "bwrap": in the sandbox, in a fresh control group with the run's limits, its PID
  namespace proved empty afterwards (what every trainer and evaluator pays).
The difference of the medians, times two, plus the copy of a validation shard of
--shard-mb megabytes (read once, hashed and written), is the sandbox's cost per experiment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gitar.host import sandbox  # noqa: E402
from gitar.host.limits import MB, Limits  # noqa: E402
from gitar.host.runner import Confined, run_confined  # noqa: E402
from gitar.loop.integrity import copy_once  # noqa: E402

TRAINER = "print('---'); print('val_bpb: 1.0')\n"
LIMITS = Limits(memory_bytes=4096 * MB, processes=4096, file_bytes=1024 * MB, log_bytes=64 * MB)


def one_run(root: Path, confined: bool) -> float:
    snapshot, outbox = root / "snap", root / "out"
    for d in (snapshot, outbox):
        d.mkdir(parents=True, exist_ok=True)
    (snapshot / "train.py").write_text(TRAINER)
    confinement = sandbox.Confinement(workdir=snapshot, home=Path.home(), writable=(outbox,),
                                      hidden=(root / "state",))
    how = Confined(sandbox.require() if confined else None, confinement if confined else None,
                   (root / "repo",), LIMITS, uuid.uuid4().hex)
    t0 = time.perf_counter()
    result = run_confined([sys.executable, "train.py"], cwd=snapshot, env=dict(os.environ),
                          log_path=root / "run.log", crash_path=outbox / "crash.json", timeout_s=60,
                          confined=how)
    elapsed = time.perf_counter() - t0
    assert result.status == "ok", (result.status, result.crash)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--shard-mb", type=int, default=100, help="size of the validation shard to copy")
    args = parser.parse_args()
    print(f"sandbox: {sandbox.require().label} ({sandbox.require().path})")
    with tempfile.TemporaryDirectory(prefix="gitar-bench-sandbox-") as tmp:
        root = Path(tmp)
        one_run(root, True)  # warm the file cache for both ways
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for confined in (False, True):
                times[confined].append(one_run(root, confined))
        shard = root / "shard.parquet"
        shard.write_bytes(os.urandom(args.shard_mb * MB))
        copies = []
        for i in range(3):
            t0 = time.perf_counter()
            copy_once(shard, root / f"copy{i}")
            copies.append(time.perf_counter() - t0)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    copy = statistics.median(copies)
    per_process = on - off
    print(f"one process, unsandboxed ('off'):  median {off:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times[False])})")
    print(f"one process, sandboxed (bwrap):     median {on:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times[True])})")
    print(f"sandbox cost per process:           {per_process:.3f} s  (ratio {on / off:.2f}x)")
    print(f"copy + hash of a {args.shard_mb} MB shard:     median {copy:.3f} s")
    print(f"sandbox cost per experiment:        {2 * per_process + copy:.3f} s  "
          "(trainer + evaluator sandboxes + the evaluation data copy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
