"""`gitar sync [REMOTE]`: this clone's records, attempt pins and branch with a shared remote."""

from __future__ import annotations

from pathlib import Path

from gitar.git import Git
from gitar.sync import SyncResult, sync


def sync_clone(remote: str = "origin", *, push: bool = True, start: str | Path = ".") -> SyncResult:
    return sync(Git.discover(start), remote, push=push)
