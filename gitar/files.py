"""Writing a file so that a reader sees the old content or the new, never half of either.

gitar's processes read each other's files while they are written (the running state, the
result `gitar wait` polls for, the ledger, the evaluator's result): every such write goes
to a hidden temp file beside the target and is renamed over it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_GLOB = ".*.tmp"  # every temp name below: hidden, so never taken for the file; .tmp, so never for a shard


def _temp_beside(path: Path) -> Path:
    # pid and a random part: two writers of one file (two worktrees, a thread) never share a temp
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: Path, text: str | bytes) -> None:
    """`path` holds `text` (or bytes), all at once; the parent directory is made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
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


def write_durable(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) on a temp file beside path, fsynced, renamed into place, the rename fsynced.

    For the large files a writer streams (a downloaded shard, a parquet table, a tensor) and that
    must survive a crash: a failed or cut write never leaves a partial file under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(*directories: Path) -> None:
    """The temp files a killed writer left in these directories (a cut download can be hundreds of
    MB). Only for directories that one process writes at a time, as prepare.py's cache is."""
    for directory in directories:
        if directory.is_dir():
            for stale in directory.glob(TEMP_GLOB):
                stale.unlink(missing_ok=True)
