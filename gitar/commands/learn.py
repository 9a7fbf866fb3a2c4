"""`gitar learn REV "what we learned"`: a lesson kept with the experiment it came from.

The lesson is one more line in the commit's note, so it travels and merges with the
records, survives `git gc` with the attempt's pin, and shows in `gitar memory`. It is
never a run: nothing that counts or averages runs sees it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gitar.errors import GitarError
from gitar.loop.workspace import open_workspace
from gitar.store.records import Lesson, Record
from gitar.text import LESSON, check_text


def learn(rev: str, text: str, start: str | Path = ".") -> tuple[Lesson, Record]:
    """Append the lesson to REV's note; returns it and the experiment's first record."""
    lesson_text = check_text(text, LESSON)
    ws = open_workspace(start, need_experiment_branch=False)
    sha = ws.git.resolve(rev)
    notebook = ws.notebook
    records = notebook.records(sha)
    if not records:
        raise GitarError(f"{rev} ({sha[:7]}) has no gitar record, so there is no experiment to learn from; "
                         "`gitar log` lists the attempts")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lesson = Lesson(commit=sha, lesson=lesson_text, branch=ws.git.current_branch(), time=now)
    notebook.add_lesson(lesson)
    return lesson, records[0]
