"""The report's figures, drawn with matplotlib's object API (no pyplot: no global state, so
reports can be rendered from several threads of the API server at once).

Accuracy and early stopping are plotted against the percent of weights remaining on a log axis
that decreases left to right, as Figures 3 and 4 of Frankle & Carbin (2019). A run of several
replicates draws their mean with error bars of one standard deviation, as the paper does.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from api_schemas.results import RoundResult
from reports.data import Point, RunView, variant_stats

COLORS = {"ticket": "#1f5fa8", "random_reinit": "#d0602c", "random_prune": "#3a8a3a"}
LABELS = {
    "ticket": "winning ticket (rewound)",
    "random_reinit": "random reinit (same mask)",
    "random_prune": "random pruning (same density)",
}
_DENSE = "#555555"
_ROUND_COLORS = ("#555555", "#1f5fa8", "#b8336a", "#7a5195")
_MAX_LAYER_LINES = 10


def png(fig: Figure, dpi: int = 110) -> bytes:
    """Encode ``fig`` as PNG bytes (deterministic: no timestamp in the metadata)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _pct(value: float) -> str:
    return f"{value:.3g}"


_PERCENT = FuncFormatter(lambda value, _pos: _pct(value))
_PERCENT_TICKS = (100, 80, 60, 40, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)


def _density_axis(ax: Axes, densities: Sequence[float]) -> None:
    """Log x axis of percent remaining, decreasing to the right, ticked at the rounds."""
    ticks = sorted({100 * d for d in densities}, reverse=True)
    step = max(1, len(ticks) // 12 + (len(ticks) % 12 > 0))
    ax.set_xscale("log")
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] * 1.5, ticks[0] / 1.5)
    else:
        ax.set_xlim(ticks[0] * 1.15, ticks[-1] / 1.15)  # left > right: decreasing
    ax.set_xticks(ticks[::step])
    ax.set_xticklabels([_pct(t) for t in ticks[::step]], rotation=45)
    ax.minorticks_off()
    ax.set_xlabel("percent of weights remaining")
    ax.grid(alpha=0.3)


def _has_validation(view: RunView) -> bool:
    return view.dense.ticket.early_stop_step is not None


def _over_replicates(view: RunView) -> str:
    return f" (mean ± std of {view.replicates} replicates)" if view.replicates > 1 else ""


def _dodge(view: RunView, index: int) -> float:
    """Factor on the density that shifts the ``index``-th variant's error bars sideways by
    about 1% of the axis width, so that the ticket's and its controls' bars at one density do
    not hide each other (1 with one replicate: no bars)."""
    if view.replicates == 1:
        return 1.0
    densities = [r.density for r in view.rounds]
    decades = max(math.log10(max(densities) / min(densities)), 0.2)
    return float(10 ** (0.012 * decades * (index - len(view.controls) / 2)))


def _draw(
    ax: Axes, view: RunView, index: int, variant: str, points: list[Point], scale: float
) -> None:
    """One variant's line; with several replicates its mean with ± one deviation bars."""
    x = [100 * p.density * _dodge(view, index) for p in points]
    y = [scale * p.mean for p in points]
    color, label = COLORS.get(variant), LABELS.get(variant, variant)
    if view.replicates > 1:
        yerr = [scale * p.std for p in points]
        ax.errorbar(x, y, yerr=yerr, capsize=3, marker="o", ms=4, color=color, label=label)
    else:
        ax.plot(x, y, marker="o", ms=4, color=color, label=label)


def accuracy_axes(ax: Axes, view: RunView) -> None:
    """(a) Test accuracy versus density: ticket, each control, and the dense net (dashed; with
    several replicates, its ± one deviation band shaded)."""
    for index, variant in enumerate(("ticket", *view.controls)):
        _draw(ax, view, index, variant, view.accuracy(variant), 100)
    dense = view.accuracy("ticket")[0]
    ax.axhline(100 * dense.mean, color=_DENSE, ls="--", lw=1, label="dense")
    if view.replicates > 1:
        low, high = 100 * (dense.mean - dense.std), 100 * (dense.mean + dense.std)
        ax.axhspan(low, high, color=_DENSE, alpha=0.12, lw=0)
    best = view.ticket_round
    chosen = None if best is None else variant_stats(best, "ticket")
    if best is not None and chosen is not None:
        ax.plot(
            [100 * best.density * _dodge(view, 0)],
            [100 * chosen.accuracy_mean],
            marker="*",
            ms=16,
            color="#f2b701",
            mec="#333333",
            ls="none",
            label=f"chosen ticket (round {best.round})",
            zorder=5,
        )
    _density_axis(ax, [r.density for r in view.rounds])
    when = "at early stopping" if _has_validation(view) else "at the end of training"
    ax.set_ylabel(f"test accuracy {when} (%)")
    ax.set_title("Accuracy as the network is pruned" + _over_replicates(view))
    ax.legend(fontsize=8, loc="best")


def early_stop_axes(ax: Axes, view: RunView) -> None:
    """(b) Early-stopping iteration (minimum validation loss) versus density."""
    _density_axis(ax, [r.density for r in view.rounds])
    ax.set_title("Early-stopping iteration" + _over_replicates(view))
    ax.set_ylabel("iteration of minimum validation loss")
    if not _has_validation(view):
        ax.text(
            0.5,
            0.5,
            "no validation split:\nno early-stopping iteration",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color=_DENSE,
        )
        return
    for index, variant in enumerate(("ticket", *view.controls)):
        _draw(ax, view, index, variant, view.early_stop(variant), 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower left")


def summary_figure(view: RunView, title: str) -> Figure:
    """(a) and (b) side by side: the figure of report.png."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    acc_ax, stop_ax = fig.subplots(1, 2)
    accuracy_axes(acc_ax, view)
    early_stop_axes(stop_ax, view)
    fig.suptitle(title, parse_math=False)  # a user's name may hold '$'
    return fig


def _layer_name(key: str) -> str:
    return key.removesuffix(".weight")


def layer_density_figure(view: RunView) -> Figure:
    """(c) Percent of each prunable layer remaining per round: lines, or a heat map when the
    network has too many layers for a readable legend."""
    layers = list(view.dense.layer_density)
    rounds = [r.round for r in view.rounds]
    if len(layers) <= _MAX_LAYER_LINES:
        fig = Figure(figsize=(12, 4.2), layout="constrained")
        ax = fig.subplots()
        for layer in layers:
            ax.plot(
                rounds,
                [100 * r.layer_density.get(layer, float("nan")) for r in view.rounds],
                marker="o",
                ms=4,
                label=_layer_name(layer),
            )
        ax.plot(
            rounds,
            [100 * r.density for r in view.rounds],
            color="black",
            ls="--",
            lw=1.5,
            label="all prunable weights",
        )
        ax.set_yscale("log")
        lowest = min(min(r.layer_density.values(), default=1.0) for r in view.rounds)
        ax.set_yticks([t for t in _PERCENT_TICKS if t >= 40 * lowest])
        ax.yaxis.set_major_formatter(_PERCENT)
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylabel("percent of layer's weights remaining")
        ax.set_xlabel("pruning round")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left", ncols=2)
        ax.set_title("Density of each layer per round")
        return fig
    fig = Figure(figsize=(12, max(3.0, 0.28 * len(layers) + 1.6)), layout="constrained")
    ax = fig.subplots()
    grid = [
        [100 * r.layer_density.get(layer, float("nan")) for r in view.rounds] for layer in layers
    ]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_yticks(range(len(layers)), [_layer_name(layer) for layer in layers], fontsize=7)
    ax.set_xticks(range(len(rounds)), [str(k) for k in rounds])
    ax.set_xlabel("pruning round")
    if len(layers) * len(rounds) <= 400:
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value < 60 else "black",
                )
    fig.colorbar(image, ax=ax, label="percent remaining")
    ax.set_title("Density of each layer per round")
    return fig


def selected_rounds(view: RunView) -> list[RoundResult]:
    """The dense round, the chosen ticket's round and the sparsest round, without repeats."""
    picked: list[RoundResult] = []
    for candidate in (view.dense, view.ticket_round, view.rounds[-1]):
        if candidate is not None and candidate not in picked:
            picked.append(candidate)
    return picked


def curves_figure(view: RunView) -> Figure:
    """(d) The ticket's training curves in the selected rounds: test accuracy and, when a
    validation split exists, validation loss; the early-stopping step is marked."""
    with_val = any(p.val_loss is not None for r in view.rounds for p in r.ticket.curve)
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if with_val else 1, squeeze=False)[0]
    best = view.ticket_round
    for index, r in enumerate(selected_rounds(view)):
        role = "dense" if r.round == 0 else ("ticket" if r is best else "sparsest")
        label = f"round {r.round}, {_pct(100 * r.density)}% ({role})"
        color = _ROUND_COLORS[index % len(_ROUND_COLORS)]
        steps = [p.step for p in r.ticket.curve]
        stop = r.ticket.early_stop_step
        axes[0].plot(
            steps, [100 * p.test_accuracy for p in r.ticket.curve], color=color, label=label
        )
        at_stop = [p for p in r.ticket.curve if p.step == stop]
        if at_stop:
            axes[0].plot([stop], [100 * at_stop[0].test_accuracy], marker="o", color=color)
        if with_val:
            val = [(p.step, p.val_loss) for p in r.ticket.curve if p.val_loss is not None]
            axes[1].plot([s for s, _ in val], [v for _, v in val], color=color, label=label)
            if at_stop and at_stop[0].val_loss is not None:
                axes[1].plot([stop], [at_stop[0].val_loss], marker="o", color=color)
    whose = " of replicate 0" if view.replicates > 1 else ""
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title(f"Ticket training{whose}: test accuracy (dot: early stopping)")
    if with_val:
        axes[1].set_ylabel("validation loss")
        axes[1].set_title(f"Ticket training{whose}: validation loss")
    for ax in axes:
        ax.set_xlabel("training iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
