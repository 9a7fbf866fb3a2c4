"""The review commands' plainest forms run without typer (gitar/cli/fast.py), saying exactly what
the typer app says; every other form is the typer app's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gitar import cli
from gitar.cli import fast
from testing.history import Built

FAST = (["log"], ["log", "--tsv"], ["log", "--json", "-n", "2"], ["log", "--all", "--limit", "3"], ["best"],
        ["best", "--json"], ["best", "--all"], ["memory"], ["memory", "--max-chars", "900", "--all"],
        ["log", "--json", "--tsv"], ["log", "-n", "0"], ["memory", "--max-chars", "10"])
TYPER = (["log", "--limit=3"], ["log", "-n3"], ["log", "-n", "x"], ["log", "-n", "-1"], ["log", "--bogus"],
         ["log", "--help"], ["best", "--json", "--json"], ["memory", "--max-chars"], ["show"], [])


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_fast_forms_say_what_typer_says(review: Built, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for args in FAST:
        assert fast.planned(args) is not None, args
        quick = _run(args, capsys)
        with monkeypatch.context() as m:
            m.setattr(fast, "planned", lambda _args: None)
            slow = _run(args, capsys)
        assert quick == slow, args
    assert _run(["log", "-n", "0"], capsys)[0] == 2  # refusals too: the same line and code


def test_every_other_form_goes_to_typer() -> None:
    for args in TYPER:
        assert fast.planned(args) is None, args


def test_a_fast_command_does_not_load_typer(review: Built) -> None:
    probe = "import sys\nfrom gitar.cli import main\ncode = main(['best'])\nprint(code, 'typer' in sys.modules, 'click' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=review.ws.root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 False False"
    assert "best " in proc.stdout
