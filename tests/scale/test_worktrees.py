"""Many agents on one machine: `gitar init TAG --worktrees N`, one worktree, branch and GPU each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing.trainers import fake_train
from testing.workspace import Workspace, make_workspace

# The fake trainer, plus a line saying which GPU it was given (inside the sandbox the one GPU
# passed in is device 0; the log's header names which one it is).
SEES_DEVICE = 'import os\nprint("device seen:", os.environ.get("CUDA_VISIBLE_DEVICES", "none"), flush=True)\n'


@pytest.fixture
def lab(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    return ws


def _tree(main: Workspace, k: int) -> Workspace:
    return Workspace(main.root.parent / f"ws-t1-gpu{k}")


def test_init_makes_one_worktree_per_gpu_and_is_safe_to_repeat(lab: Workspace) -> None:
    proc = lab.gitar("init", "t1", "--worktrees", "2")
    assert proc.returncode == 0, proc.stderr
    for k in (0, 1):
        tree = _tree(lab, k)
        assert f"created autoresearch/t1-gpu{k} in {tree.root} (GPU {k})" in proc.stdout
        assert tree.git("branch", "--show-current").stdout.strip() == f"autoresearch/t1-gpu{k}"
        gitdir = Path(tree.git("rev-parse", "--absolute-git-dir").stdout.strip())
        assert (gitdir / "gitar" / "device").read_text().strip() == str(k)
        assert tree.git("rev-parse", f"refs/gitar/base/autoresearch/t1-gpu{k}").stdout.strip() == lab.head()
    again = lab.gitar("init", "t1", "--worktrees", "2")
    assert again.returncode == 0 and "kept autoresearch/t1-gpu1" in again.stdout, again.stderr
    assert lab.git("branch", "--show-current").stdout.strip() == "main"  # the main checkout stays put


def test_worktrees_run_at_once_each_on_its_own_gpu(lab: Workspace) -> None:
    assert lab.gitar("init", "t1", "--worktrees", "2").returncode == 0
    trees = [_tree(lab, k) for k in (0, 1)]
    for tree in trees:
        assert tree.gitar("run").returncode == 0
        (tree.root / "train.py").write_text(SEES_DEVICE + fake_train(0.5, "sleep", 2.0))
    procs = [subprocess.Popen([sys.executable, "-m", "gitar", "try", f"on gpu {k}"], cwd=tree.root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for k, tree in enumerate(trees)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err  # both kept: neither waited for nor refused by the other
        assert out.startswith("keep "), out
    for k, tree in enumerate(trees):
        [rec] = tree.records(tree.tip(f"autoresearch/t1-gpu{k}"))
        log = Path(str(rec["log"])).read_text()
        assert "device seen: 0" in log and f", GPU {k} only)" in log, log
        assert rec["description"] == f"on gpu {k}" and rec["branch"] == f"autoresearch/t1-gpu{k}"
    everything = lab.gitar("log", "--all")
    assert "on gpu 0" in everything.stdout and "on gpu 1" in everything.stdout


def test_an_unpinned_worktree_shares_the_clones_lock(lab: Workspace) -> None:
    """Two checkouts with no device of their own would share a GPU: one experiment at a time."""
    assert lab.gitar("init", "t1").returncode == 0
    other = lab.root.parent / "plain"
    lab.git("worktree", "add", "-q", "-b", "autoresearch/t2", str(other))
    plain = Workspace(other)
    assert lab.gitar("run").returncode == 0 and plain.gitar("run").returncode == 0
    lab.write_train(0.5, "sleep", 3.0)
    running = subprocess.Popen([sys.executable, "-m", "gitar", "try", "holds the GPU"], cwd=lab.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        gitar_dir = lab.root / ".git" / "gitar"
        for _ in range(200):
            if (gitar_dir / "running.json").exists():
                break
            subprocess.run(["sleep", "0.05"])
        plain.write_train(0.5)
        proc = plain.gitar("try", "wants the same GPU")
        assert proc.returncode == 2 and "another experiment is running" in proc.stderr, proc.stderr
    finally:
        running.communicate(timeout=60)


def test_a_killed_run_is_recovered_in_its_own_worktree(lab: Workspace) -> None:
    assert lab.gitar("init", "t1", "--worktrees", "2").returncode == 0
    a, b = _tree(lab, 0), _tree(lab, 1)
    for tree in (a, b):
        assert tree.gitar("run").returncode == 0
    best = a.tip("autoresearch/t1-gpu0")
    a.write_train(0.5, "sleep", 60.0)
    proc = subprocess.Popen([sys.executable, "-m", "gitar", "try", "killed"], cwd=a.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    gitdir = Path(a.git("rev-parse", "--absolute-git-dir").stdout.strip())
    running = gitdir / "gitar" / "running.json"
    for _ in range(400):
        if running.exists() and '"pgid"' in running.read_text() and '"pgid": null' not in running.read_text():
            break
        subprocess.run(["sleep", "0.05"])
    proc.kill()
    proc.wait()
    assert b.gitar("status").returncode == 0  # another worktree's command leaves it alone
    assert running.exists()
    assert a.gitar("status").returncode == 0  # its own finishes it
    assert not running.exists()
    assert a.tip("autoresearch/t1-gpu0") == best
    killed = [r for r in a.all_records() if r["description"] == "killed"]
    assert [r["status"] for r in killed] == ["aborted"]


def test_best_all_names_the_best_of_every_agent(lab: Workspace) -> None:
    assert lab.gitar("init", "t1", "--worktrees", "3").returncode == 0
    trees = [_tree(lab, k) for k in (0, 1, 2)]
    for tree, value in zip(trees[:2], (0.6, 0.4), strict=True):
        assert tree.gitar("run").returncode == 0
        tree.write_train(value)
        assert tree.gitar("try", f"reach {value}").returncode == 0
    proc = lab.gitar("best", "--all")  # from the main checkout, which is on no experiment branch
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("best of 3 branches: ") and "val_bpb 0.400000 on autoresearch/t1-gpu1" in lines[0]
    assert "<- best" in next(line for line in lines[1:] if "t1-gpu1" in line)
    assert "(no best yet)" in next(line for line in lines[1:] if "t1-gpu2" in line)
    data = json.loads(lab.gitar("best", "--all", "--json").stdout)
    assert data["best"]["branch"] == "autoresearch/t1-gpu1" and data["best"]["val_bpb"] == 0.4
    assert [b["branch"] for b in data["branches"]] == [f"autoresearch/t1-gpu{k}" for k in (0, 1, 2)]


def test_memory_all_shows_what_the_other_agents_tried(lab: Workspace) -> None:
    assert lab.gitar("init", "t1", "--worktrees", "2").returncode == 0
    a, b = _tree(lab, 0), _tree(lab, 1)
    for tree in (a, b):
        assert tree.gitar("run").returncode == 0
    b.write_train(1.5)
    assert b.gitar("try", "swap the optimizer for sgd").returncode == 1
    mine = a.gitar("memory")
    assert mine.returncode == 0 and "sgd" not in mine.stdout
    every = a.gitar("memory", "--all")
    assert every.returncode == 0, every.stderr
    assert "swap the optimizer for sgd" in every.stdout and "all 2 branches" in every.stdout
    assert "gitar memory: autoresearch/t1-gpu0" in every.stdout  # this branch's summary leads
    from_main = lab.gitar("memory", "--all")
    assert from_main.returncode == 0 and "swap the optimizer for sgd" in from_main.stdout, from_main.stderr


def test_status_all_shows_every_worktrees_running_experiment(lab: Workspace) -> None:
    assert lab.gitar("init", "t1", "--worktrees", "2").returncode == 0
    a, b = _tree(lab, 0), _tree(lab, 1)
    a.write_train(0.5, "sleep", 30.0)
    started = a.gitar("try", "a slow idea on gpu 0", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    sha = json.loads(started.stdout)["commit"]
    try:
        deadline = time.time() + 30
        while True:  # from the main checkout, which is on no experiment branch
            data = json.loads(lab.gitar("status", "--all", "--json").stdout)
            rows = {Path(w["worktree"]): w for w in data["worktrees"]}
            run = rows[a.root.resolve()]["running"]
            if run is not None and run["phase"] == "training":
                break
            assert time.time() < deadline, data
            time.sleep(0.1)
        assert list(rows) == [lab.root.resolve(), a.root.resolve(), b.root.resolve()]
        main, busy, idle = (rows[p] for p in rows)
        assert main["state"] == "idle" and main["branch"] == "main" and main["gpu"] == "unpinned", main
        assert busy["gpu"] == "GPU 0" and busy["branch"] == "autoresearch/t1-gpu0", busy
        assert run["commit"] == sha and run["description"] == "a slow idea on gpu 0", run
        assert 0 < run["time_left_s"] <= 30 and run["phase_timeout_s"] == pytest.approx(30, abs=1), run
        assert idle["state"] == "idle" and idle["running"] is None and idle["gpu"] == "GPU 1", idle
        table = b.gitar("status", "--all")  # the same table from any worktree
        assert table.returncode == 0, table.stderr
        head, *lines = table.stdout.splitlines()
        assert head.split() == ["worktree", "branch", "commit", "phase", "left", "gpu", "description"]
        row = next(line for line in lines if line.startswith(str(a.root.resolve()) + " "))
        assert f"autoresearch/t1-gpu0  {sha[:7]}" in row and "GPU 0" in row, row
        assert row.endswith('"a slow idea on gpu 0"') and ("start-up/compile" in row or "training" in row), row
        other = next(line for line in lines if line.startswith(str(b.root.resolve()) + " "))
        assert " idle " in other and other.endswith(" -"), other
    finally:
        gitdir = Path(a.git("rev-parse", "--absolute-git-dir").stdout.strip())
        running = json.loads((gitdir / "gitar" / "running.json").read_text())
        os.kill(running["pid"], signal.SIGTERM)  # recorded as aborted
        a.gitar("wait")
