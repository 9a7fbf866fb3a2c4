"""Writing a file so that a reader sees the old content or the new, never half of either.

gitar's processes read each other's files while they are written (the running state, the
result `gitar wait` polls for, the ledger, the evaluator's result): every such write goes
to a hidden temp file beside the target and is renamed over it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str | bytes) -> None:
    """`path` holds `text` (or bytes), all at once; the parent directory is made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and a random part: two writers of one file (two worktrees, a thread) never share a temp
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """One JSON document and a newline, written atomically."""
    write_atomic(path, json.dumps(obj) + "\n")
