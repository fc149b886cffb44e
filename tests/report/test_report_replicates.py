"""Reports of runs with several replicates: the data layer's means and deviations, error bars
in the figures, mean ± std in the page; a file written before replicates reads as one."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread

from reports import write_report
from reports.data import RunView, load_run, min_val_loss, variant_stats
from reports.figures import curves_figure, summary_figure
from tests.report.replicated import (
    SPEC,
    replicated_rounds,
    summary,
    without_replicates,
    write_run,
)

SQRT_2_3 = (2 / 3) ** 0.5  # population deviation of (a - d, a, a + d) is d·√(2/3)


def three_replicates() -> RunView:
    return RunView(rounds=replicated_rounds(), spec=SPEC, spec_hash=None, summary=summary())


def one_replicate(tmp_path: Path) -> RunView:
    """The same run as a file written before replicates existed: replicate 0 alone."""
    (tmp_path / "rounds.json").write_text(json.dumps(without_replicates(replicated_rounds())))
    spec = {k: v for k, v in SPEC.items() if k != "replicates"} | {"name": "one replicate"}
    old_summary = {
        "ticket_round": 1,
        "ticket_density": 0.8,
        "ticket_accuracy": 0.91,
        "dense_accuracy": 0.90,
        "rounds_completed": 2,
        "stop_reason": "rounds",
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": spec, "summary": old_summary}))
    return load_run(tmp_path)


# ------------------------------------------------------------------------------ data


def test_series_are_means_and_deviations_over_replicates() -> None:
    view = three_replicates()
    assert view.replicates == 3
    ticket = view.accuracy("ticket")
    assert [(p.round, p.density) for p in ticket] == [(0, 1.0), (1, 0.8), (2, 0.64)]
    assert [p.mean for p in ticket] == pytest.approx([0.91, 0.92, 0.90])
    assert [p.std for p in ticket] == pytest.approx(
        [0.01 * SQRT_2_3, 0.01 * SQRT_2_3, 0.02 * SQRT_2_3]
    )
    reinit = view.accuracy("random_reinit")
    assert [p.round for p in reinit] == [1, 2]  # the dense round trains no control
    assert [p.mean for p in reinit] == pytest.approx([0.89, 2.5 / 3])
    assert [p.std for p in reinit] == pytest.approx([0.01 * SQRT_2_3, 0.024944], abs=1e-6)
    stop = view.early_stop("ticket")
    assert [p.mean for p in stop] == pytest.approx([160 / 3, 40, 40])
    assert [p.std for p in stop] == pytest.approx([20 * 2**0.5 / 3, 0, 20 * SQRT_2_3])
    loss = min_val_loss(view.rounds[0])
    assert loss is not None and loss == pytest.approx((0.32, 0.02 * SQRT_2_3))


def test_a_file_without_replicates_reads_as_one(tmp_path: Path) -> None:
    view = one_replicate(tmp_path)
    assert view.replicates == 1
    assert all(r.stats == {} and r.replicates == [] for r in view.rounds)
    ticket = view.accuracy("ticket")
    assert [p.mean for p in ticket] == pytest.approx([0.90, 0.91, 0.88])  # replicate 0's
    assert [p.std for p in ticket] == [0.0, 0.0, 0.0]
    assert [p.mean for p in view.early_stop("random_prune")] == [40.0, 60.0]
    stats = variant_stats(view.rounds[2], "random_reinit")
    assert stats is not None and stats.n == 1 and stats.accuracy_mean == pytest.approx(0.84)
    assert variant_stats(view.rounds[0], "random_reinit") is None
    assert min_val_loss(view.rounds[1]) == pytest.approx((0.28, 0.0))


# ------------------------------------------------------------------------------ figures


def _error_bars(view: RunView) -> list[list[ErrorbarContainer]]:
    fig = summary_figure(view, "title")
    return [[c for c in ax.containers if isinstance(c, ErrorbarContainer)] for ax in fig.axes]


def test_figures_draw_mean_with_deviation_bars() -> None:
    accuracy, early_stop = _error_bars(three_replicates())
    assert [c.get_label() for c in accuracy] == [
        "winning ticket (rewound)",
        "random reinit (same mask)",
        "random pruning (same density)",
    ]
    assert len(early_stop) == 3
    ticket = accuracy[0]
    assert np.asarray(ticket.lines[0].get_ydata()) == pytest.approx([91, 92, 90])
    spans = [(seg[0][1], seg[1][1]) for seg in ticket.lines[2][0].get_segments()]
    assert spans[2] == pytest.approx((90 - 2 * SQRT_2_3, 90 + 2 * SQRT_2_3))
    stop_spans = [(seg[0][1], seg[1][1]) for seg in early_stop[0].lines[2][0].get_segments()]
    assert stop_spans[1] == pytest.approx((40, 40))
    at_80 = [np.asarray(c.lines[0].get_xdata())[-2] for c in accuracy]  # round 1 of each
    assert len(set(at_80)) == 3 and at_80 == pytest.approx([80, 80, 80], rel=0.03)
    curves = curves_figure(three_replicates()).axes[0]
    assert curves.get_title().startswith("Ticket training of replicate 0:")


def test_one_replicate_draws_plain_lines(tmp_path: Path) -> None:
    view = one_replicate(tmp_path)
    assert _error_bars(view) == [[], []]
    fig = summary_figure(view, "title")
    accuracy = fig.axes[0]
    assert accuracy.get_title() == "Accuracy as the network is pruned"
    ticket = next(line for line in accuracy.lines if line.get_label() == "winning ticket (rewound)")
    assert np.asarray(ticket.get_xdata()) == pytest.approx([100, 80, 64])  # not shifted sideways
    assert np.asarray(ticket.get_ydata()) == pytest.approx([90, 91, 88])
    assert curves_figure(view).axes[0].get_title().startswith("Ticket training:")


# ------------------------------------------------------------------------------ the page


def _rows(html: str) -> list[str]:
    table = html[html.index('<table id="rounds">') :]
    return re.findall(r"<tr[^>]*>(.*?)</tr>", table)


def test_page_shows_mean_and_deviation(tmp_path: Path) -> None:
    html_path, png_path = write_report(write_run(tmp_path / "run"))
    html = html_path.read_text()
    assert "replicates: <code>3</code>" in html
    assert "<dd>92.00% ± 0.82 (mean of 3 replicates)</dd>" in html
    assert "<dd>91.00% ± 0.82 (mean of 3 replicates)</dd>" in html
    assert "<dd>+1.00 points</dd>" in html
    assert "mean ± standard deviation over 3 replicates" in html
    rows = _rows(html)
    assert len(rows) == 4 and '<tr class="ticket"><td>1</td>' in html
    assert "<td>90.00% ± 1.63</td><td>40 ± 16</td><td>0.3300 ± 0.0163</td>" in rows[3]
    assert "<td>83.33% ± 2.49</td><td>82.00% ± 0.82</td>" in rows[3]
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3
    for data in images:
        assert imread(io.BytesIO(base64.b64decode(data))).shape[0] > 100
    assert "mean of 3 replicates, its bar ± one standard deviation" in html
    assert png_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_page_of_one_replicate_has_no_deviations(tmp_path: Path) -> None:
    one_replicate(tmp_path)
    html = write_report(tmp_path)[0].read_text()
    assert "±" not in html and "replicates" not in html
    assert "<dd>91.00%</dd>" in html and "<dd>90.00%</dd>" in html
    assert "Accuracy is the test accuracy at the early-stopping step; density counts" in html
    assert "<td>88.00%</td><td>20</td><td>0.3300</td>" in _rows(html)[3]
