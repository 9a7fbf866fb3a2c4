"""What holds an experiment branch to what measures it: its base commit and its data pin.

refs/gitar/base/<branch> names the commit `gitar init` made the branch on: its harness
(prepare.py, ground.json) is the one every experiment on the branch must keep.
refs/gitar/data/<branch> points at a JSON blob with the sha256 of each evaluation file the
branch was first measured on. Both live in git, so `gitar sync` carries them to runners and
other clones (gitar/sharing/pin_sync.py) and gc keeps them. A pin is created once: whoever
loses a race to create one reads back the winner's. Only `gitar init` of a new branch under
an old name replaces them (the old branch's pins do not apply to it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from gitar.paths import Paths
from gitar.store.git import Git
from gitar.store.refs import base_ref, data_ref

_MUST_NOT_EXIST = ""  # update-ref's old value for "create, do not move": git's own compare-and-swap


# ---------------------------------------------------------------------------
# The branch base
# ---------------------------------------------------------------------------


def base_commit(git: Git, branch: str) -> str | None:
    """The commit the branch was created on: its harness is the one every experiment must keep."""
    return git.ref_target(base_ref(branch))


def record_base(git: Git, branch: str, sha: str) -> None:
    """The branch's base is sha, whatever it was (`gitar init` of a new branch)."""
    git.pin(base_ref(branch), sha, f"gitar: base of {branch}")


def ensure_base(git: Git, branch: str, fallback: str) -> str:
    """The branch's base. A branch without one (made by an older gitar, or fetched into a clone
    where `gitar init` never ran) takes `fallback`, the commit its first measured run builds on;
    should another process make one first, that one stands."""
    base = base_commit(git, branch)
    if base is not None:
        return base
    git.run("update-ref", "-m", f"gitar: base of {branch}", base_ref(branch), fallback, _MUST_NOT_EXIST, check=False)
    return base_commit(git, branch) or fallback


# ---------------------------------------------------------------------------
# The data pin
# ---------------------------------------------------------------------------


def _legacy_pin_path(paths: Paths, branch: str) -> Path:
    # Where gitar 0.1 kept the pin, one file per branch; read once and moved into git.
    return paths.base / "bases" / (branch.replace("%", "%25").replace("/", "%2F") + ".json")


def _parse_pin(raw: bytes) -> dict[str, str] | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None
    return {str(k): v for k, v in data.items()}


def load_data_pin(git: Git, branch: str) -> dict[str, str] | None:
    """The sha256 of each evaluation file the branch was first measured on, or None."""
    raw = git.ref_blob(data_ref(branch))
    if raw is not None:
        return _parse_pin(raw)
    legacy = _legacy_pin_path(Paths(git.common_dir), branch)
    try:
        pinned = _parse_pin(legacy.read_bytes())
    except OSError:
        return None
    if pinned is not None:
        save_data_pin(git, branch, pinned)
    return pinned


def save_data_pin(git: Git, branch: str, files: Mapping[str, str]) -> None:
    """Create the branch's pin; a pin that exists already (another process, a sync) is kept."""
    body = json.dumps({"branch": branch, "data": dict(sorted(files.items()))}, indent=1) + "\n"
    blob = git.out("hash-object", "-w", "--stdin", input=body)
    git.run("update-ref", "-m", f"gitar: data pin of {branch}", data_ref(branch), blob, _MUST_NOT_EXIST, check=False)


def forget_data_pin(git: Git, branch: str) -> None:
    git.delete_ref(data_ref(branch))
    _legacy_pin_path(Paths(git.common_dir), branch).unlink(missing_ok=True)
