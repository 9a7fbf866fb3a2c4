"""Which gitar this is: the release and a hash of its code, for every record it writes.

The evaluation's code is gitar's (gitar/loop/evaluator.py and what it imports), not the
workspace's, so a record's harness_sha256 (prepare.py and ground.json of the commit) does not
say what measured it. The hash covers the whole package source: any change to gitar changes it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import gitar


@functools.cache
def code_sha256() -> str:
    """sha256 over every .py file of the installed package, by path relative to it, in order."""
    root = Path(gitar.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def identity() -> dict[str, str]:
    """What a record says of the gitar that ran and measured it."""
    return {"version": gitar.__version__, "sha256": code_sha256()}
