"""`gitar sync [REMOTE]`: this clone's records, attempt pins and branch with a shared remote."""

from __future__ import annotations

from pathlib import Path

from gitar.sharing.sync import SyncResult, sync
from gitar.store.git import Git


def sync_clone(remote: str = "origin", *, push: bool = True, start: str | Path = ".") -> SyncResult:
    return sync(Git.discover(start), remote, push=push)
