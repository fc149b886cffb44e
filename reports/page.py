"""The report page: one self-contained HTML file (figures as data: URIs, inline CSS, no script).

Everything that comes from the spec is user input (the job name, labels, the dataset URI) and is
escaped. A Content-Security-Policy meta tag forbids any request the page could still make, so it
opens offline and leaks nothing, wherever it is served from.

A run of several replicates shows every accuracy as mean ± standard deviation (in percentage
points); with one replicate the page shows plain numbers, as before replicates existed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from html import escape

from api_schemas.results import RoundResult
from reports.data import RunView, min_val_loss, variant_stats

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1320px;
       padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #555; margin: 0 0 12px; } code { font-size: 12px; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.summary dt { color: #555; } dl.summary dd { margin: 0; font-weight: 600; }
.note { background: #fff7e0; border-left: 4px solid #f2b701; padding: 6px 10px; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0 10px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th { background: #f3f5f8; } td { white-space: nowrap; }
tr.ticket td { background: #fff4cc; font-weight: 600; }
"""


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _pct(fraction: float | None, digits: int = 2) -> str:
    return "–" if fraction is None else f"{100 * fraction:.{digits}f}%"


def _pm(mean: float, std: float, n: int) -> str:
    """``89.01% ± 0.12`` over several replicates, ``89.01%`` for one."""
    return _pct(mean) + (f" ± {100 * std:.2f}" if n > 1 else "")


def figure(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` inline, with alt text."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_text(alt)}">'


def _header(view: RunView) -> str:
    name = view.field("name") or "unnamed job"
    facts = [
        ("architecture", view.field("model", "arch")),
        ("dataset", view.field("dataset", "uri")),
        ("strategy", view.field("pruning", "strategy")),
        ("rewind to", view.field("pruning", "rewind_to")),
        ("steps per round", view.field("training", "steps")),
        ("seed", view.field("seed")),
        ("replicates", view.replicates if view.replicates > 1 else None),
    ]
    meta = " · ".join(f"{label}: <code>{_text(v)}</code>" for label, v in facts if v is not None)
    labels = view.field("labels") or {}
    if isinstance(labels, dict) and labels:
        meta += "<br>labels: " + ", ".join(
            f"<code>{_text(k)}={_text(v)}</code>" for k, v in sorted(labels.items())
        )
    spec_hash = f"<br>spec hash: <code>{_text(view.spec_hash)}</code>" if view.spec_hash else ""
    return f'<h1>{_text(name)}</h1>\n<p class="meta">{meta}{spec_hash}</p>'


def _summary(view: RunView) -> str:
    best, summary = view.ticket_round, view.summary
    if summary is None or best is None:
        done = len(view.rounds) - 1
        return (
            f'<p class="note">Run in progress: {done} pruning round{"s" if done != 1 else ""} '
            "finished; the winning ticket is chosen when the run ends.</p>"
        )
    drop = summary.dense_accuracy - summary.ticket_accuracy
    n = view.replicates
    of_n = f" (mean of {n} replicates)" if n > 1 else ""
    rows = [
        ("winning ticket", f"round {summary.ticket_round} of {summary.rounds_completed}"),
        (
            "weights remaining",
            f"{_pct(summary.ticket_density)} ({best.remaining_weights:,} of "
            f"{best.prunable_weights:,}; {1 / summary.ticket_density:.1f}× smaller)",
        ),
        ("ticket accuracy", _pm(summary.ticket_accuracy, summary.ticket_accuracy_std, n) + of_n),
        ("dense accuracy", _pm(summary.dense_accuracy, summary.dense_accuracy_std, n) + of_n),
        ("change vs dense", f"{-100 * drop:+.2f} points"),
        ("stopped because", summary.stop_reason),
    ]
    if n > 1:
        rows.insert(
            1,
            (
                "replicates",
                f"{n} independent IMP chains; the ticket is chosen on their mean "
                "validation accuracy",
            ),
        )
    items = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in rows)
    return f'<dl class="summary">{items}</dl>'


def _wall(r: RoundResult) -> float:
    return r.ticket.wall_time_s + sum(v.wall_time_s for v in r.controls.values())


def _cells(values: Iterable[str]) -> str:
    return "".join(f"<td>{v}</td>" for v in values)


def _accuracy(r: RoundResult, variant: str, n: int) -> str:
    stats = variant_stats(r, variant)
    return "–" if stats is None else _pm(stats.accuracy_mean, stats.accuracy_std, n)


def _early_stop(r: RoundResult, n: int) -> str:
    stats = variant_stats(r, "ticket")
    if stats is None or stats.early_stop_step_mean is None:
        return "–"
    spread = f" ± {stats.early_stop_step_std or 0:,.0f}" if n > 1 else ""
    return f"{stats.early_stop_step_mean:,.0f}{spread}"


def _min_val_loss(r: RoundResult, n: int) -> str:
    loss = min_val_loss(r)
    if loss is None:
        return "–"
    return f"{loss[0]:.4f}" + (f" ± {loss[1]:.4f}" if n > 1 else "")


def rounds_table(view: RunView) -> str:
    """The per-round table; the winning ticket's row is highlighted."""
    controls = view.controls
    n = view.replicates
    head = [
        "round",
        "density",
        "remaining weights",
        "ticket accuracy",
        "early-stop step",
        "min val loss",
        *(f"{_text(c)} accuracy" for c in controls),
        "wall time (s)",
    ]
    best = view.ticket_round
    body = []
    for r in view.rounds:
        cells = [
            str(r.round),
            _pct(r.density),
            f"{r.remaining_weights:,} / {r.prunable_weights:,}",
            _accuracy(r, "ticket", n),
            _early_stop(r, n),
            _min_val_loss(r, n),
            *(_accuracy(r, c, n) for c in controls),
            f"{_wall(r):.1f}",
        ]
        css = ' class="ticket"' if r is best else ""
        body.append(f"<tr{css}>{_cells(cells)}</tr>")
    header = "".join(f'<th scope="col">{h}</th>' for h in head)
    return (
        '<table id="rounds">\n<thead><tr>'
        + header
        + "</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def _table_note(view: RunView) -> str:
    when = (
        "test accuracy at the early-stopping step"
        if view.dense.ticket.early_stop_step is not None
        else "final test accuracy"
    )
    if view.replicates == 1:
        return f"Accuracy is the {when}; density counts prunable weights only."
    return (
        f"Accuracy is the {when}. Accuracies, the early-stop step and the min val loss (the "
        f"ticket's) are mean ± standard deviation over {view.replicates} replicates, the "
        "deviation of accuracy in percentage points; density, remaining weights and wall time "
        "are replicate 0's. Density counts prunable weights only."
    )


def render_page(view: RunView, figures: list[tuple[str, str, bytes]]) -> str:
    """The whole page; ``figures`` are (heading, alt text, PNG bytes)."""
    name = view.field("name") or "unnamed job"
    sections = "\n".join(f"<h2>{_text(h)}</h2>\n{figure(data, alt)}" for h, alt, data in figures)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Lottery-ticket report: {_text(name)}</title>
<style>{_STYLE}</style>
</head>
<body>
{_header(view)}
<h2>Winning ticket</h2>
{_summary(view)}
{sections}
<h2>Rounds</h2>
<p class="meta">{_table_note(view)}</p>
{rounds_table(view)}
</body>
</html>
"""
