"""``write_report``: draw the figures once, write report.png and report.html atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from api_schemas.run_layout import REPORT_STEM
from reports.data import RunView, load_run
from reports.page import render_page


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden ``.tmp`` file in the same folder and rename: readers see the old file
    or the new one, never half of one (and artifact listings skip hidden temporary files)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _title(view: RunView) -> str:
    name = view.field("name") or view.field("model", "arch") or "lottery-ticket run"
    dataset = view.field("dataset", "uri")
    return f"{name} — {dataset}" if dataset else str(name)


def write_report(run_dir: Path, *, stem: str = REPORT_STEM) -> tuple[Path, Path]:
    """Write ``<stem>.html`` and ``<stem>.png`` into ``run_dir`` from its JSON files.

    Works mid-run from ``rounds.json`` alone; raises :class:`~reports.ReportError` when no
    round has finished. Returns (html path, png path).
    """
    # matplotlib loads on the first report, not when the API server starts.
    from reports.figures import curves_figure, layer_density_figure, png, summary_figure

    view = load_run(run_dir)
    summary_png = png(summary_figure(view, _title(view)))
    spread = (
        f" Each point is the mean of {view.replicates} replicates, its bar ± one standard "
        "deviation."
        if view.replicates > 1
        else ""
    )
    figures = [
        (
            "Accuracy and early stopping versus weights remaining",
            "Left: test accuracy of the winning ticket and its controls versus percent of weights "
            "remaining (log axis), dense accuracy dashed. Right: early-stopping iteration versus "
            "percent of weights remaining." + spread,
            summary_png,
        ),
        (
            "Density of each layer",
            "Percent of each prunable layer's weights remaining after each pruning round.",
            png(layer_density_figure(view)),
        ),
        (
            "Training curves",
            "Test accuracy and validation loss versus training iteration of the winning ticket in "
            "the dense round, the chosen ticket's round and the sparsest round.",
            png(curves_figure(view)),
        ),
    ]
    html_path, png_path = run_dir / f"{stem}.html", run_dir / f"{stem}.png"
    atomic_write(png_path, summary_png)
    atomic_write(html_path, render_page(view, figures).encode("utf-8"))
    return html_path, png_path
