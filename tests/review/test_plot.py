"""`gitar plot`: what the chart shows, checked on matplotlib's own artists, and the PNG it writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gitar.commands import plot
from gitar.review import history
from gitar.review.history import History
from gitar.store.records import ABORTED, CRASH, DISCARD, KEEP, TIMEOUT, UNDECIDED, Record

BRANCH = "autoresearch/t1"
T0 = 1_767_225_600.0  # 2026-01-01


def _run(commit: str, status: str, value: float | None, n: int, *, kind: str = "attempt",
         description: str = "") -> Record:
    started = dt.datetime.fromtimestamp(T0 + 60 * n, dt.timezone.utc).isoformat()
    return Record(status=status, commit=commit, branch=BRANCH, description=description or f"attempt {n}",
                  run_id=f"r{n}", kind=kind, val_bpb=value, started=started)


def _history() -> tuple[History, dict[str, Any]]:
    """Forty attempts: a baseline re-measured later (its mean moves), a keep by the confirm rule,
    kept attempts at the left, top and right edges with long descriptions, and one of each failure."""
    attempts = []

    def add(commit: str, runs: list[Record]) -> None:
        attempts.append(history.attempt(commit, BRANCH, tuple(runs), (), history._started(runs[0])))

    long = "a description long enough to run off the figure at the right edge of the chart"
    add("b" * 40, [_run("b" * 40, KEEP, 1.0, 0, kind="baseline", description="baseline " + long)])
    values = {"b" * 40: [1.0]}
    for i in range(1, 39):
        c = f"{i:040x}"
        status, value = DISCARD, 1.0 - i * 0.0001 + 0.002
        runs = [_run(c, status, value, i)]
        if i == 10:
            runs = [_run(c, CRASH, None, i)]
        elif i == 11:
            runs = [_run(c, TIMEOUT, None, i)]
        elif i == 12:
            runs = [_run(c, ABORTED, None, i)]
        elif i == 20:  # the confirm rule: an undecided run, then the deciding one; kept at their mean
            runs = [_run(c, UNDECIDED, 0.9960, i, kind="confirm"), _run(c, KEEP, 0.9950, i)]
            values[c] = [0.9960, 0.9950]
        elif i % 9 == 0:
            runs = [_run(c, KEEP, 1.0 - i * 0.0002, i, description=long)]
            values[c] = [1.0 - i * 0.0002]
        add(c, runs)
    last = "e" * 40
    add(last, [_run(last, KEEP, 0.9900, 39, description="the newest keep, " + long)])
    values[last] = [0.9900]
    # Much later, the baseline is re-measured twice: its mean moves to 1.002, its kept value does not.
    base = attempts[0]
    reruns = (_run(base.commit, KEEP, 1.003, 40, kind="rerun"), _run(base.commit, KEEP, 1.003, 41, kind="rerun"))
    attempts[0] = history.attempt(base.commit, BRANCH, (*base.runs, *reruns), (), base.started)
    h = History(git=None, branch=BRANCH, unordered=attempts, tip=last)  # type: ignore[arg-type]
    return h, {c: sum(v) / len(v) for c, v in values.items()}


def _drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, History, dict[str, float]]:
    """The figure `gitar plot` saves for _history() and the renderer that drew it, caught as it is
    saved (the PNG is written too; closing the figure afterwards takes its canvas away)."""
    from matplotlib.figure import Figure

    saved: list[Any] = []
    real = Figure.savefig

    def keep(fig: Any, *args: Any, **kwargs: Any) -> None:
        real(fig, *args, **kwargs)
        saved.append((fig, fig.canvas.get_renderer()))

    monkeypatch.setattr(Figure, "savefig", keep)
    h, kept = _history()
    plot.draw(h, tmp_path / "progress.png")
    assert len(saved) == 1
    return *saved[0], h, kept


def _by_label(fig: Any, prefix: str) -> Any:
    found = [c for c in fig.axes[0].collections if c.get_label().startswith(prefix)]
    assert len(found) == 1, [c.get_label() for c in fig.axes[0].collections]
    return found[0]


def test_every_text_is_inside_the_figure_and_every_label_inside_the_axes(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fig, renderer, _, _ = _drawn(tmp_path, monkeypatch)
    figure_box, axes_box = fig.bbox, fig.axes[0].get_window_extent(renderer)
    # Everything drawn (tick labels of the visible ticks, titles, legend, annotations), as
    # bbox_inches="tight" would measure it, lies inside the canvas.
    drawn = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    assert figure_box.x0 - 0.5 <= drawn.x0 and drawn.x1 <= figure_box.x1 + 0.5, (drawn, figure_box)
    assert figure_box.y0 - 0.5 <= drawn.y0 and drawn.y1 <= figure_box.y1 + 0.5, (drawn, figure_box)
    labels = fig.axes[0].texts
    assert len(labels) == 7  # every kept attempt is labelled, none dropped
    for t in labels:
        e = t.get_window_extent(renderer)
        assert axes_box.x0 <= e.x0 and e.x1 <= axes_box.x1 and axes_box.y0 <= e.y0 and e.y1 <= axes_box.y1, \
            t.get_text()


def test_crash_timeout_and_aborted_have_distinct_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig, _, _, _ = _drawn(tmp_path, monkeypatch)
    marks = [_by_label(fig, name) for name in ("crash (1)", "timeout (1)", "aborted (1)")]
    shapes = [m.get_paths()[0].vertices for m in marks]
    for a in range(3):
        for b in range(a + 1, 3):
            assert shapes[a].shape != shapes[b].shape or not np.allclose(shapes[a], shapes[b])
    x = [int(m.get_offsets()[0][0]) for m in marks]
    assert x == [10, 11, 12]


def test_kept_points_sit_at_their_kept_value_with_the_spread_and_the_noise_band(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig, _, h, kept = _drawn(tmp_path, monkeypatch)
    points = _by_label(fig, "kept (").get_offsets()
    order = [a.commit for a in h.attempts if a.status == KEEP]
    assert [round(float(y), 6) for _, y in points] == [round(kept[c], 6) for c in order]
    assert points[0][1] == pytest.approx(1.0)  # the baseline where it was kept, not its later mean
    assert h.attempts[0].val_bpb == pytest.approx(1.002)
    assert points[3][1] == pytest.approx(0.9955)  # a confirm keep: the mean of the runs that decided
    # the spread of the re-measured baseline: one line from its lowest run to its highest
    spread = fig.axes[0].collections
    lines = [c for c in spread if type(c).__name__ == "LineCollection"]
    segments = [s for c in lines for s in c.get_segments()]
    assert any(s[0][0] == 0 and {round(s[0][1], 6), round(s[1][1], 6)} == {1.0, 1.003} for s in segments)
    band = _by_label(fig, "noise ±1σ")
    assert band is not None


def test_the_png_is_written(tmp_path: Path) -> None:
    import matplotlib.image

    h, _ = _history()
    out = tmp_path / "progress.png"
    plot.draw(h, out)
    image = matplotlib.image.imread(str(out))
    assert image.shape[:2] == (840, 1680)
