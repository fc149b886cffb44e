"""``lth run``: run a job spec locally, without the service, with a progress bar and a round table.

Exit codes: 0 finished; 1 the data, model or spec could not be used; 2 the spec file is invalid or
the directory is in use; 130 interrupted (a checkpoint was saved: rerun with ``--resume``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from api_schemas.results import RoundResult, RunSummary
from api_schemas.spec import JobSpec
from api_schemas.specfile import parse_spec_text
from worker.engine.data import DataConfig
from worker.engine.errors import EngineError, Stopped
from worker.engine.hooks import Progress as RunProgress

DEFAULT_DATA_ROOTS = "/usr/share/datasets"


def data_config_from_env(extra_roots: tuple[Path, ...] = ()) -> DataConfig:
    """Data roots from ``LTH_DATA_ROOTS`` (colon-separated; default /usr/share/datasets and
    $LTH_HOME/datasets) plus ``extra_roots``; downloads only when ``LTH_ALLOW_DOWNLOAD=1``."""
    home = Path(os.environ.get("LTH_HOME", Path.home() / ".lth")).expanduser()
    configured = os.environ.get("LTH_DATA_ROOTS", f"{DEFAULT_DATA_ROOTS}:{home / 'datasets'}")
    roots = tuple(Path(p).expanduser() for p in configured.split(":") if p) + extra_roots
    download = os.environ.get("LTH_ALLOW_DOWNLOAD", "0").lower() in ("1", "true", "yes")
    return DataConfig(roots=roots, download=download, torchvision_root=home / "torchvision")


def load_spec_file(path: Path) -> JobSpec:
    """Read a JSON or YAML spec; raises ``click.UsageError`` listing every invalid field."""
    text = path.read_text()
    try:
        raw: Any = parse_spec_text(text, json_only=path.suffix == ".json")
    except ValueError as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise click.UsageError(f"{path} is not valid {kind}: {exc}") from None
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, err['loc'])) or '(spec)'}: {err['msg']}" for err in exc.errors()
        ]
        raise click.UsageError(f"{path} is not a valid job spec:\n" + "\n".join(lines)) from None


def _accuracy(result: RoundResult, variant: str) -> str:
    """The accuracy cell: mean ± std over replicates when there are several."""
    stats = result.stats_of(variant)
    if stats is None:
        return "-"
    if stats.n > 1:
        return f"{stats.accuracy_mean:.2%} ± {stats.accuracy_std:.2%}"
    return f"{stats.accuracy_mean:.2%}"


def round_table(rounds: list[RoundResult], summary: RunSummary | None = None) -> Table:
    controls = sorted({name for r in rounds for name in r.controls})
    table = Table(title="Rounds (accuracy at the early-stopping step when validated)")
    for column in ["round", "density", "weights", "ticket acc", "early stop", *controls, "time"]:
        table.add_column(column, justify="right")
    for r in rounds:
        marker = " *" if summary is not None and r.round == summary.ticket_round else ""
        cells = [
            f"{r.round}{marker}",
            f"{r.density:.2%}",
            f"{r.remaining_weights:,}",
            _accuracy(r, "ticket"),
            str(r.ticket.early_stop_step) if r.ticket.early_stop_step is not None else "-",
            *[_accuracy(r, c) if c in r.controls else "-" for c in controls],
            f"{r.ticket.wall_time_s + sum(c.wall_time_s for c in r.controls.values()):.1f}s",
        ]
        table.add_row(*cells)
    return table


@click.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="Continue the run already in --out.")
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="CPU threads to train with; 0: every core this process may use.",
)
@click.option(
    "--one-by-one",
    is_flag=True,
    help="Train every network alone instead of stacking a round's networks (the reference path).",
)
def run(spec_file: Path, out_dir: Path, resume: bool, threads: int, one_by_one: bool) -> None:
    """Run the lottery-ticket procedure for SPEC_FILE (JSON or YAML) on this machine.

    Artifacts land in --out. Local runs may read data under the current directory as well as
    under $LTH_DATA_ROOTS.
    """
    from worker.engine.imp import IMPRun

    console = Console(stderr=True)
    spec = load_spec_file(spec_file)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise click.UsageError(f"{out_dir} is not empty: pass --resume to continue the run there")
    out_dir.mkdir(parents=True, exist_ok=True)

    stop = {"requested": False}

    def on_interrupt(_signum: int, _frame: FrameType | None) -> None:
        stop["requested"] = True

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("starting", total=1.0, metrics="")

    def on_progress(p: RunProgress) -> None:
        if p.event in ("reused", "execution"):
            return
        shown = f"acc {p.metrics['test_accuracy']:.2%}" if "test_accuracy" in p.metrics else ""
        description = f"round {p.round}/{p.rounds_total} {p.variant} step {p.step}/{p.steps_total}"
        if shown:
            bar.update(task, metrics=shown)
        bar.update(task, completed=p.fraction, description=description)

    try:
        with bar:
            summary = IMPRun(
                spec,
                out_dir,
                data_config_from_env(extra_roots=(Path.cwd(),)),
                on_progress=on_progress,
                should_stop=lambda: stop["requested"],
                poll_seconds=0.5,
                batched=not one_by_one,
                threads=lambda: threads or len(os.sched_getaffinity(0)),
            ).run()
    except Stopped:
        console.print(
            f"[yellow]Interrupted; progress is saved. Resume with:[/] "
            f"lth run {spec_file} --out {out_dir} --resume"
        )
        sys.exit(130)
    except EngineError as exc:
        console.print(f"[red]error ({exc.code}):[/] {exc}")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    from worker.engine.artifacts import load_rounds

    out = Console()
    out.print(round_table(load_rounds(out_dir), summary))
    out.print(
        f"Winning ticket: round {summary.ticket_round} at {summary.ticket_density:.2%} density, "
        f"accuracy {summary.ticket_accuracy:.2%} (dense {summary.dense_accuracy:.2%})"
        + (f" over {summary.replicates} replicates" if summary.replicates > 1 else "")
        + f"; {summary.stop_reason}."
    )
    out.print(f"Artifacts: {out_dir.resolve()} (ticket.safetensors, mask.safetensors, ...)")
