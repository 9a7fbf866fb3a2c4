"""The attack suite's fixtures: one measured workspace per session, a private copy per test.

The session builds what a user has after `python prepare.py` and `gitar init`: the real
prepare.py on the small corpus, the CPU preset, gitar's hooks, and a baseline measured by
`gitar run` of the honest tiny trainer (trainers/honest.py). Its val_bpb is the honest number
every attack is judged against: the same model, honestly trained, scores exactly that.

Each test gets a private copy of that workspace (cache included), its own venv and its own
copy of the gitar package (testing/arena.py), so an attack may write anything it can
reach: only the test's own files are there to hit.

At the end of a run that collected attack tests, one line: `attacks: N tried, M stopped`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing.arena import (
    BRANCH,
    Arena,
    check_isolated,
    copy_gitar,
    kill_marked,
    make_private_python,
    private_env,
    trainer,
)
from testing.hermetic import hermetic_session
from testing.prepared import build_workspace

# experiment.timeout_s: training and evaluation together. An honest run takes ~10 s on two idle
# cores; the longest attack (the budget overrun) trains 30 s. Room for a busy machine.
TIMEOUT_S = 120
ALLOWANCE_S = 22
# Small limits for the resource attacks, set only if this gitar's ground.json accepts them
# (experiment.limits; see limits_probe below). Generous for the tiny trainer and the evaluator.
LIMITS = {"memory_mb": 1024, "processes": 256, "log_mb": 16}

_COLLECTED = pytest.StashKey[bool]()


@dataclass(frozen=True)
class Template:
    root: Path
    honest: float  # the baseline's val_bpb: the honest trainer, measured by gitar
    baseline: str
    record: dict[str, Any]
    limits: dict[str, int] | None


def _commit_ground(root: Path, ground: dict[str, Any]) -> None:
    (root / "ground.json").write_text(json.dumps(ground, indent=2) + "\n")
    subprocess.run(["git", "commit", "-qa", "--amend", "--no-edit"], cwd=root, check=True, capture_output=True)


@pytest.fixture(scope="session")
def attack_template(tmp_path_factory: pytest.TempPathFactory, prepared_workspace: Path,
                    pre_commit_home: Path) -> Iterator[Template]:
    base = tmp_path_factory.mktemp("attacks")
    with hermetic_session(base / "home"), pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRE_COMMIT_HOME", str(pre_commit_home))
        ws = build_workspace(prepared_workspace, base / "ws")
        python = make_private_python(base / "venv")
        copy_gitar(base / "pkg")
        env = private_env(python, base / "pkg")
        check_isolated(python, env, base / "pkg")
        (ws.root / "train.py").write_text(trainer())
        ground = json.loads((ws.root / "ground.json").read_text())
        ground["experiment"]["timeout_s"] = TIMEOUT_S
        # The budget attack trains OVERRUN_S (30 s) against a 3 s budget: the allowance for start-up
        # and export must stay below that, with room for the honest trainer on a busy machine.
        # (A gitar without training.allowance_s refuses the key at init: then it is dropped.)
        ground["training"]["allowance_s"] = {"train": 120, "test": 60, "cpu": ALLOWANCE_S}
        # The limits probe: a gitar that does not know experiment.limits (or one of its keys)
        # refuses it at init, since ground.json keys are validated. Keys it names are dropped and
        # init tried again; without any, the resource attacks meet whatever bounds that gitar has.

        def gitar(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(python), "-m", "gitar", *args], cwd=ws.root, env=env,
                                  capture_output=True, text=True, timeout=600)

        limits: dict[str, int] | None = dict(LIMITS)
        while True:
            experiment = {**ground["experiment"], **({"limits": limits} if limits else {})}
            _commit_ground(ws.root, {**ground, "experiment": experiment})
            init = gitar("init", "t1")
            said = init.stdout + init.stderr
            if "allowance_s" in said and "allowance_s" in ground["training"]:
                del ground["training"]["allowance_s"]
                ws.git("checkout", "-q", "main")
                ws.git("branch", "-q", "-D", BRANCH, check=False)
                continue
            if init.returncode == 0 or not limits or "limits" not in said:
                break
            named = [key for key in limits if key in said]
            limits = {k: v for k, v in limits.items() if k not in named} if named else None
            ws.git("checkout", "-q", "main")
            ws.git("branch", "-q", "-D", BRANCH, check=False)
        assert init.returncode == 0, init.stdout + init.stderr
        run = gitar("run", "--json")
        assert run.returncode == 0, run.stdout + run.stderr
        record = json.loads(run.stdout)
        assert record["status"] == "keep" and record["val_bpb_source"] == "harness", record
        yield Template(root=ws.root, honest=float(record["val_bpb"]), baseline=ws.head(), record=record,
                       limits=limits or None)


@pytest.fixture
def arena(attack_template: Template, hermetic: Path, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Arena]:
    """A private copy of the measured workspace with its own interpreter and gitar; cwd inside it."""
    root = tmp_path / "ws"
    shutil.copytree(attack_template.root, root, symlinks=True)
    python = make_private_python(tmp_path / "venv")
    copy_gitar(tmp_path / "pkg")
    check_isolated(python, private_env(python, tmp_path / "pkg"), tmp_path / "pkg")
    monkeypatch.chdir(root)
    arena = Arena(root=root, python=python, pkg_root=tmp_path / "pkg", honest=attack_template.honest,
                  baseline=attack_template.baseline, limits=attack_template.limits)
    # Hooks that go through git (a plain commit) use the interpreter `gitar init` recorded: this one.
    arena.git("config", "gitar.python", str(python))
    assert arena.tip() == arena.baseline
    try:
        yield arena
    finally:
        kill_marked(arena.marker)
        shutil.rmtree(Path("/tmp") / arena.marker, ignore_errors=True)
        for log in (root / ".git" / "gitar" / "logs").glob("*"):
            if log.is_file() and log.stat().st_size > 64 << 20:
                log.unlink()  # a flooded log: the machine's disk is shared


# ---------------------------------------------------------------------------
# Counting: `attacks: N tried, M stopped`
# ---------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("attack") for item in items):
        config.stash[_COLLECTED] = True


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """tried: attack tests that ran (an xfail counts, a skip does not); stopped: those that passed."""
    if not config.stash.get(_COLLECTED, False):
        return
    tried: set[str] = set()
    not_stopped: set[str] = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            if not isinstance(report, pytest.TestReport) or "attack" not in report.keywords:
                continue  # deselected items, warnings and collect reports sit in stats too
            if report.when != "call" and not report.failed:
                continue  # a skipped test has only setup and teardown reports
            tried.add(report.nodeid)
            if report.failed or (report.skipped and hasattr(report, "wasxfail")):  # failed, errored, xfailed
                not_stopped.add(report.nodeid)
    terminalreporter.write_line(f"attacks: {len(tried)} tried, {len(tried - not_stopped)} stopped")
