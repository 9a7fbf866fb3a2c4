"""`gitar plot [-o progress.png]`: autoresearch's progress chart, drawn from the records.

x is the experiment's index in time order, y its val_bpb. Discarded attempts are faint
dots; kept ones are marked at the value they were kept at (the runs that decided, not a
mean that later re-measurements moved) and labelled with their description; the branch's
best so far is a step line inside a band of ±1σ of the measured noise. A commit run more
than once shows its runs' spread (min to max, each run a tick). Attempts without a number
are marks along the top edge, one shape each: crash ×, timeout ▼, aborted ○.
Every label is placed where it fits inside the axes, shortened if no placement does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gitar.errors import GitarError
from gitar.loop.workspace import open_workspace
from gitar.review import history
from gitar.review.history import Attempt, History
from gitar.store.records import ABORTED, CRASH, DISCARD, KEEP, TIMEOUT
from gitar.text import safe

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

MAX_LABELS = 30  # past this, only the largest improvements are labelled: the rest would overprint
LABEL_CHARS = 40
SHORTEST_LABEL = 8  # a label shortened to fit keeps at least this many characters, else it is left out
# (status, marker, colour, legend name): one shape per way of producing no number.
FAILURES = ((CRASH, "x", "#d62728", "crash"), (TIMEOUT, "v", "#ff7f0e", "timeout"),
            (ABORTED, "o", "#7f7f7f", "aborted"))
# Where a label may sit around its point, in order of preference: (dx, dy) in points, alignment,
# rotation. The first puts the text up and right of the point, as autoresearch's chart does;
# the others mirror it, for points near the right or top edge.
PLACEMENTS = (((6, 6), "left", "bottom", 25), ((-6, 6), "right", "bottom", -25),
              ((6, -6), "left", "top", -25), ((-6, -6), "right", "top", 25))


@dataclass(frozen=True)
class Plotted:
    path: Path
    attempts: int
    kept: int


def plot_progress(output: Path, start: str | Path = ".") -> Plotted:
    ws = open_workspace(start)
    h = history.load(ws.git, ws.branch)
    if not any(a.val_bpb is not None for a in h.unordered):
        raise GitarError(f"nothing to plot on {ws.branch}: no attempt has a val_bpb yet; "
                         "`gitar run` measures the baseline")
    output = output.expanduser()
    if output.suffix.lower() != ".png":
        raise GitarError(f"{output}: the chart is a PNG; give an output path ending in .png")
    if not output.parent.is_dir():
        raise GitarError(f"{output.parent}: no such directory; create it or pick another --output")
    draw(h, output)
    return Plotted(output, len(h.unordered), h.counts[KEEP])


def _label(text: str, chars: int = LABEL_CHARS) -> str:
    line = safe(history.one_line(text, 1000))
    return line if len(line) <= chars else line[: chars - 1] + "…"


def kept_value(a: Attempt) -> float | None:
    """The value the attempt was kept at: the mean of its successful runs up to the one that kept it.

    Re-measurements (`gitar run --repeat`, kind "rerun") come later and move the mean the judge
    compares against from then on, but the attempt was kept for the number it had then.
    """
    values = []
    for r in a.runs:
        if r.ok and r.val_bpb is not None and r.kind != "rerun":
            values.append(r.val_bpb)
        if r.status == KEEP:
            break
    if not values:
        return a.val_bpb
    return sum(values) / len(values)


def draw(h: History, output: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(h)
    try:
        fig.savefig(output, dpi=120)
    finally:
        plt.close(fig)


def figure(h: History) -> Figure:
    """The chart as a matplotlib figure, laid out (the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file and nothing else
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    attempts = h.attempts
    discard = [(i, a.val_bpb) for i, a in enumerate(attempts) if a.status == DISCARD and a.val_bpb is not None]
    kept = [(i, a, v) for i, a in enumerate(attempts) if a.status == KEEP and (v := kept_value(a)) is not None]
    xs = [i for i, _, _ in kept]
    ys = [v for _, _, v in kept]
    fig, ax = plt.subplots(figsize=(14, 7))
    try:
        if discard:
            ax.scatter([i for i, _ in discard], [v for _, v in discard], s=14, c="#b8b8b8", alpha=0.6,
                       zorder=2, label=f"discarded ({len(discard)})")
        if kept:
            steps_x, steps_y = [*xs, len(attempts) - 1], [*ys, ys[-1]]
            noise = h.noise
            if noise is not None and noise.std > 0:
                # The band the judge reads a difference against: inside it, a change is noise.
                ax.fill_between(steps_x, [y - noise.std for y in steps_y], [y + noise.std for y in steps_y],
                                step="post", color="#1f8a4c", alpha=0.12, linewidth=0, zorder=1,
                                label=f"noise ±1σ ({noise.std:.6f}, {noise.n} runs)")
            # The running best: each kept attempt is the branch's best until the next one.
            ax.step(steps_x, steps_y, where="post", color="#1f8a4c", linewidth=2, alpha=0.8, zorder=3,
                    label="best so far")
            _spreads(ax, [(i, a) for i, a, _ in kept] + [(i, a) for i, a in enumerate(attempts)
                                                        if a.status == DISCARD and len(a.values) > 1])
            # Smaller marks when there are many, or a thousand kept points merge into one thick line.
            size = 56 if len(kept) <= 100 else max(8.0, 56 * (100 / len(kept)) ** 0.5)
            ax.scatter(xs, ys, s=size, c="#2ecc71", edgecolors="black", linewidths=0.6 if len(kept) <= 100 else 0.2,
                       zorder=4, label=f"kept ({len(kept)})")
        top = blended_transform_factory(ax.transData, ax.transAxes)
        for status, marker, colour, name in FAILURES:
            at = [i for i, a in enumerate(attempts) if a.status == status]
            if at:
                hollow = marker == "o"
                ax.scatter(at, [0.975] * len(at), transform=top, marker=marker, s=26, zorder=5,
                           c="none" if hollow else colour, edgecolors=colour if hollow else None,
                           label=f"{name} ({len(at)})")
        runs = [v for a in attempts if a.status in (KEEP, DISCARD) for v in a.values]
        _limits(ax, [v for _, v in discard] + ys + runs, ys)
        ax.set_xlim(-0.5, max(len(attempts) - 0.5, 1))
        ax.set_xlabel("experiment # (time order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # experiments are counted, not measured
        ax.set_ylabel("val_bpb (lower is better)")
        ax.set_title(_label(f"{h.branch}: {len(attempts)} experiments, {len(kept)} kept", 120))
        ax.grid(True, alpha=0.25)
        ax.legend(loc="lower left", fontsize=9)  # early experiments sit high, the best low and right
        fig.tight_layout()
        _place_labels(fig, ax, [(i, a, v) for i, a, v in _labelled(kept, len(attempts))])
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _spreads(ax: Axes, measured: list[tuple[int, Attempt]]) -> None:
    """Each commit run more than once: a line from its lowest to its highest run, a tick per run."""
    xs, ys, lows, highs = [], [], [], []
    for i, a in measured:
        if len(a.values) < 2:
            continue
        xs += [i] * len(a.values)
        ys += list(a.values)
        lows.append((i, min(a.values)))
        highs.append((i, max(a.values)))
    if not xs:
        return
    ax.vlines([i for i, _ in lows], [v for _, v in lows], [v for _, v in highs], color="#135e33", linewidth=1.2,
              alpha=0.7, zorder=3.5)
    ax.scatter(xs, ys, marker="_", s=60, c="#135e33", linewidths=1.2, zorder=3.5,
               label="runs of one commit (min to max)")


def _place_labels(fig: Figure, ax: Axes, labelled: list[tuple[int, Attempt, float]]) -> None:
    """Annotate each point at the first placement whose text lies inside the axes; shorten it if none does."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    box = ax.get_window_extent(renderer)
    for i, a, value in labelled:
        text = None
        chars = LABEL_CHARS
        while chars >= SHORTEST_LABEL and text is None:
            for offset, ha, va, rotation in PLACEMENTS:
                # parse_math=False: a "$" in a description is text, not mathtext (which could fail the draw).
                note = ax.annotate(_label(a.description, chars), (i, value), textcoords="offset points",
                                   xytext=offset, fontsize=8, color="#135e33", rotation=rotation, ha=ha, va=va,
                                   rotation_mode="anchor", parse_math=False, zorder=6)
                if _inside(note, renderer, box):
                    text = note
                    break
                note.remove()
            chars = chars * 2 // 3
        # A label that fits nowhere is left out: the point and the step line still show the attempt.


def _inside(note: Annotation, renderer: RendererBase, box: Bbox) -> bool:
    extent = note.get_window_extent(renderer)
    return bool(extent.x0 >= box.x0 and extent.x1 <= box.x1 and extent.y0 >= box.y0 and extent.y1 <= box.y1)


def _labelled(kept: list[tuple[int, Attempt, float]], n_attempts: int) -> list[tuple[int, Attempt, float]]:
    """Every kept attempt; past MAX_LABELS, the largest improvement in each of MAX_LABELS equal spans of x."""
    if len(kept) <= MAX_LABELS:
        return kept
    gains: dict[int, float] = {}
    previous: float | None = None
    for i, _, value in kept:
        gains[i] = 0.0 if previous is None else previous - value
        previous = value
    best_in_span: dict[int, tuple[int, Attempt, float]] = {}
    for i, a, value in kept:
        span = i * MAX_LABELS // max(n_attempts, 1)
        if span not in best_in_span or gains[i] > gains[best_in_span[span][0]]:
            best_in_span[span] = (i, a, value)
    return sorted(best_in_span.values(), key=lambda p: p[0])


def _limits(ax: Axes, values: list[float], kept: list[float]) -> None:
    """From just below the best to just above the baseline: far-off discards would flatten the story."""
    lo = min(values)
    baseline = kept[0] if kept else max(values)
    hi = max(baseline, min(max(values), baseline + (baseline - lo) * 0.5))
    span = hi - lo or max(abs(hi) * 0.01, 1e-3)
    ax.set_ylim(lo - span * 0.1, hi + span * 0.25)
