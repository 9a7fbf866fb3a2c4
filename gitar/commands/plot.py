"""`gitar plot [-o progress.png]`: autoresearch's progress chart, drawn from the records.

x is the experiment's index in time order, y its val_bpb. Discarded attempts are faint
dots, kept ones marked and labelled with their description, the branch's best a step
line; attempts without a number (crash, timeout, aborted) are ticks along the top edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gitar import history
from gitar.commands.common import open_workspace
from gitar.errors import GitarError
from gitar.history import FAILED, History
from gitar.records import DISCARD, KEEP
from gitar.text import safe

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_LABELS = 30  # past this, only the largest improvements are labelled: the rest would overprint
LABEL_CHARS = 40


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


def _label(text: str) -> str:
    line = safe(history.one_line(text, 1000))
    return line if len(line) <= LABEL_CHARS else line[: LABEL_CHARS - 1] + "…"


def draw(h: History, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file and nothing else
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    attempts = h.attempts
    discard = [(i, a.val_bpb) for i, a in enumerate(attempts) if a.status == DISCARD and a.val_bpb is not None]
    kept = [(i, a) for i, a in enumerate(attempts) if a.status == KEEP and a.val_bpb is not None]
    failed = [i for i, a in enumerate(attempts) if a.status in FAILED]

    fig, ax = plt.subplots(figsize=(14, 7))
    try:
        if discard:
            ax.scatter([i for i, _ in discard], [v for _, v in discard], s=14, c="#b8b8b8", alpha=0.6,
                       zorder=2, label=f"discarded ({len(discard)})")
        xs = [i for i, _ in kept]
        ys = [a.val_bpb for _, a in kept if a.val_bpb is not None]
        if kept:
            # The running best: each kept attempt is the branch's best until the next one.
            ax.step([*xs, len(attempts) - 1], [*ys, ys[-1]], where="post", color="#1f8a4c", linewidth=2,
                    alpha=0.8, zorder=3, label="best so far")
            # Smaller marks when there are many, or a thousand kept points merge into one thick line.
            size = 56 if len(kept) <= 100 else max(8.0, 56 * (100 / len(kept)) ** 0.5)
            ax.scatter(xs, ys, s=size, c="#2ecc71", edgecolors="black", linewidths=0.6 if len(kept) <= 100 else 0.2,
                       zorder=4, label=f"kept ({len(kept)})")
        for i, a in _labelled(kept, len(attempts)):
            # parse_math=False: a "$" in a description is text, not mathtext (which could fail the draw).
            ax.annotate(_label(a.description), (i, a.val_bpb), textcoords="offset points", xytext=(6, 6),
                        fontsize=8, color="#135e33", rotation=25, ha="left", va="bottom", parse_math=False)
        if failed:
            top = blended_transform_factory(ax.transData, ax.transAxes)
            ax.scatter(failed, [0.98] * len(failed), transform=top, marker="x", s=22, c="#d62728",
                       zorder=5, label=f"crash / timeout ({len(failed)})")
        _limits(ax, [v for _, v in discard] + ys, ys)
        ax.set_xlim(-0.5, max(len(attempts) - 0.5, 1))
        ax.set_xlabel("experiment # (time order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # experiments are counted, not measured
        ax.set_ylabel("val_bpb (lower is better)")
        ax.set_title(f"{h.branch}: {len(attempts)} experiments, {len(kept)} kept")
        ax.grid(True, alpha=0.25)
        ax.legend(loc="lower left", fontsize=9)  # early experiments sit high, the best low and right
        fig.tight_layout()
        fig.savefig(output, dpi=120)
    finally:
        plt.close(fig)


def _labelled(kept: list[tuple[int, history.Attempt]], n_attempts: int) -> list[tuple[int, history.Attempt]]:
    """Every kept attempt; past MAX_LABELS, the largest improvement in each of MAX_LABELS equal spans of x."""
    if len(kept) <= MAX_LABELS:
        return kept
    gains: dict[int, float] = {}
    previous: float | None = None
    for i, a in kept:
        value = a.val_bpb if a.val_bpb is not None else 0.0
        gains[i] = 0.0 if previous is None else previous - value
        previous = value
    best_in_span: dict[int, tuple[int, history.Attempt]] = {}
    for i, a in kept:
        span = i * MAX_LABELS // max(n_attempts, 1)
        if span not in best_in_span or gains[i] > gains[best_in_span[span][0]]:
            best_in_span[span] = (i, a)
    return sorted(best_in_span.values(), key=lambda p: p[0])


def _limits(ax: Axes, values: list[float], kept: list[float]) -> None:
    """From just below the best to just above the baseline: far-off discards would flatten the story."""
    lo = min(values)
    baseline = kept[0] if kept else max(values)
    hi = max(baseline, min(max(values), baseline + (baseline - lo) * 0.5))
    span = hi - lo or max(abs(hi) * 0.01, 1e-3)
    ax.set_ylim(lo - span * 0.1, hi + span * 0.25)
