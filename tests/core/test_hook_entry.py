"""gitar/loop/hook_entry.py: what the git hooks run maps every outcome to an exit code, as the CLI does."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitar.errors import ExitCode
from gitar.loop import hook_entry
from testing.workspace import init_repo


def test_an_unexpected_error_in_a_hook_is_one_line_exit_internal_and_a_saved_traceback(
        hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    repo = init_repo(tmp_path / "repo").root
    monkeypatch.chdir(repo)

    def broken() -> int:
        raise RuntimeError("the preflight fell over")

    monkeypatch.setattr(hook_entry, "stage_check", broken)
    assert hook_entry.main(["check"]) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gitar: internal error: RuntimeError: the preflight fell over (traceback: ")
    saved = Path(err.strip().rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert saved.parent == repo / ".git" / "gitar"
    assert "Traceback" in saved.read_text() and "the preflight fell over" in saved.read_text()


def test_a_refusal_in_a_hook_is_one_line_and_exit_1(hermetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from gitar.errors import GitarError

    def refuses() -> int:
        raise GitarError("train.py: line 3: invalid syntax")

    monkeypatch.setattr(hook_entry, "stage_check", refuses)
    assert hook_entry.main(["check"]) == 1  # pre-commit aborts the commit on any non-zero exit
    assert capsys.readouterr().err == "gitar: refused: train.py: line 3: invalid syntax\n"
