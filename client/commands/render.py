"""Human-readable views of API objects (rich tables and one-line summaries).

A job of several replicates shows its accuracies as ``mean ± std`` (the deviation in
percentage points); rounds written before replicates existed have no ``stats`` and are one
replicate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from api_schemas.jobs import Dataset, Event, Job, ModelInfo
from api_schemas.results import RoundResult


def _row(table: Table, *cells: str) -> None:
    """Add a row of plain text: names and messages may contain ``[``, which is rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def duration(seconds: float | None) -> str:
    """``95`` → ``1m35s``; unknown → ``?``."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def mean_std(mean: float, std: float, replicates: int) -> str:
    """``89.01% ± 0.12`` over several replicates, ``89.01%`` for one."""
    return f"{mean:.2%} ± {100 * std:.2f}" if replicates > 1 else f"{mean:.2%}"


def outcome(job: Job) -> str:
    """What happened to a job, in one line."""
    if job.status == "succeeded" and job.result is not None:
        r = job.result
        over = f" over {r.replicates} replicates" if r.replicates > 1 else ""
        return (
            f"Job {job.id} succeeded: the ticket (round {r.ticket_round}) keeps "
            f"{r.ticket_density:.2%} of the weights at "
            f"{mean_std(r.ticket_accuracy, r.ticket_accuracy_std, r.replicates)} accuracy{over} "
            f"(dense {mean_std(r.dense_accuracy, r.dense_accuracy_std, r.replicates)}; "
            f"stopped: {r.stop_reason})."
        )
    if job.status == "failed":
        reason = f"{job.error.code}: {job.error.message}" if job.error else "no reason given"
        return f"Job {job.id} failed ({reason})."
    return f"Job {job.id} is {job.status}."


def _progress_cell(job: Job) -> str:
    if job.result is not None:
        r = job.result
        spread = f" ± {100 * r.ticket_accuracy_std:.1f}" if r.replicates > 1 else ""
        return f"ticket {r.ticket_density:.1%} @ {r.ticket_accuracy:.1%}{spread}"
    if job.progress is not None and job.status == "running":
        return f"{job.progress.fraction:.0%}"
    return ""


def jobs_table(jobs: Iterable[Job]) -> Table:
    """One row per job."""
    table = Table(show_edge=False)
    for column in ("id", "status", "name", "created", "progress / result"):
        # An id stays whole on narrow terminals and in pipes (80 columns): it is copied.
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for job in jobs:
        _row(
            table,
            job.id,
            job.status,
            job.name or "",
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _progress_cell(job),
        )
    return table


def replicate_count(rounds: list[RoundResult]) -> int:
    """How many replicates the rounds are over (1 when they carry no statistics)."""
    return max((s.n for r in rounds for s in r.stats.values()), default=1)


def _accuracy(r: RoundResult, variant: str, n: int) -> str:
    stats = r.stats_of(variant)
    return "-" if stats is None else mean_std(stats.accuracy_mean, stats.accuracy_std, n)


def rounds_table(rounds: list[RoundResult], ticket_round: int | None) -> Table:
    """Per round: density, weights left, and the ticket's (and controls') accuracy; over
    several replicates their mean ± std (density and weights are replicate 0's)."""
    controls = sorted({name for r in rounds for name in r.controls})
    n = replicate_count(rounds)
    over = f"; mean ± std over {n} replicates" if n > 1 else ""
    table = Table(title=f"Rounds (accuracy at the early-stopping step{over})", show_edge=False)
    for column in ["round", "density", "weights", "ticket", *controls]:
        table.add_column(column, justify="right")
    for r in rounds:
        _row(
            table,
            f"{r.round}{' *' if r.round == ticket_round else ''}",
            f"{r.density:.2%}",
            f"{r.remaining_weights:,}",
            *[_accuracy(r, variant, n) for variant in ("ticket", *controls)],
        )
    return table


def job_detail(job: Job, rounds: list[RoundResult]) -> RenderableType:
    """Everything ``lth jobs show`` prints about one job."""
    lines = [
        f"job        {job.id}",
        f"status     {job.status}" + (" (cancel requested)" if job.cancel_requested else ""),
        f"name       {job.name or '-'}",
        f"labels     {', '.join(f'{k}={v}' for k, v in job.labels.items()) or '-'}",
        f"model      {job.spec.model.arch}",
        f"dataset    {job.spec.dataset.uri}",
        f"created    {job.created_at:%Y-%m-%d %H:%M:%S}",
        f"attempt    {job.attempt}",
    ]
    if job.spec.replicates > 1:
        lines.insert(6, f"replicates {job.spec.replicates}")
    if job.progress is not None and job.status == "running":
        p = job.progress
        lines.append(
            f"progress   round {p.round} of {max(p.rounds_total - 1, 0)}, {p.variant}, "
            f"step {p.step}/{p.steps_total}, {p.fraction:.0%}, ETA {duration(p.eta_seconds)}"
        )
    if job.status in ("succeeded", "failed"):
        lines.append(outcome(job))
    parts: list[RenderableType] = [Text("\n".join(lines))]
    if rounds:
        parts.append(rounds_table(rounds, job.result.ticket_round if job.result else None))
    return Group(*parts)


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def event_line(event: Event) -> str:
    """``#12 01:02:03 progress round=1 step=40 ...``"""
    data = " ".join(f"{key}={_value(value)}" for key, value in event.data.items())
    return f"#{event.id} {event.created_at:%H:%M:%S} {event.type} {data}".rstrip()


def datasets_table(datasets: Iterable[Dataset]) -> Table:
    """One row per dataset."""
    table = Table(show_edge=False)
    for column in ("id", "name", "format", "train", "test", "shape", "classes", "size"):
        # An id stays whole on narrow terminals and in pipes (80 columns): it is copied.
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for d in datasets:
        _row(
            table,
            d.id,
            d.name,
            d.format,
            str(d.train_size),
            str(d.test_size),
            "x".join(map(str, d.input_shape)),
            "-" if d.num_classes is None else str(d.num_classes),
            f"{d.size:,}",
        )
    return table


def models_table(models: Iterable[ModelInfo]) -> Table:
    """One row per built-in architecture."""
    table = Table(show_edge=False)
    for column in ("name", "parameters", "input", "options", "description"):
        table.add_column(column, overflow="fold")
    for m in models:
        _row(
            table,
            m.name,
            "-" if m.parameters is None else f"{m.parameters:,}",
            "x".join(map(str, m.reference_input)),
            ", ".join(m.options) or "-",
            m.description,
        )
    return table
