"""``lth jobs``: list, show, cancel, follow, wait for and download jobs, and show their rounds."""

from __future__ import annotations

from pathlib import Path

import click

from api_schemas.jobs import Job
from client.commands.common import EPILOG, JOB_STATUS_EXIT, ExitCode, Output, api_command
from client.commands.render import event_line, job_detail, jobs_table, outcome, rounds_table
from client.commands.waiting import poll_option, show_end, wait_for
from client.sdk import Client
from client.sdk.paging import MAX_JOB_PAGE

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not key=value", param_hint="--label")
        labels[key] = val
    return labels


@click.group(epilog=EPILOG)
def jobs() -> None:
    """List, inspect, follow, cancel and download pruning jobs."""


@jobs.command("list", epilog=EPILOG)
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Repeatable."
)
@click.option("--label", "labels", multiple=True, help="key=value; repeat to require several.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Most jobs shown."
)
@api_command
def list_(
    client: Client, out: Output, statuses: tuple[str, ...], labels: tuple[str, ...], limit: int
) -> None:
    """Your jobs, newest first (--json: an array of jobs)."""
    found = list(
        client.list_jobs(
            status=statuses,
            label=_labels(labels),
            limit=limit,
            page_size=min(limit, MAX_JOB_PAGE),
        )
    )
    out.result(found, jobs_table(found) if found else "No jobs.")


@jobs.command(epilog=EPILOG)
@click.argument("job_id")
@api_command
def show(client: Client, out: Output, job_id: str) -> None:
    """Status, progress, outcome and per-round results of JOB_ID."""
    job = client.get_job(job_id)
    if out.as_json:
        out.result(job)
        return
    rounds = client.rounds(job_id) if job.status != "queued" else []
    out.result(job, job_detail(job, rounds))


@jobs.command(epilog=EPILOG)
@click.argument("job_id")
@api_command
def rounds(client: Client, out: Output, job_id: str) -> None:
    """Per-round results of JOB_ID so far: the ticket's and its controls' accuracy, as
    mean ± std when the job ran several replicates (--json: the rounds as the API serves
    them, every replicate's results included)."""
    found = client.rounds(job_id)
    if out.as_json:
        out.result(found)
        return
    job = client.get_job(job_id)
    ticket_round = job.result.ticket_round if job.result else None
    out.result(found, rounds_table(found, ticket_round) if found else "No round has finished yet.")


@jobs.command(epilog=EPILOG)
@click.argument("job_id")
@api_command
def cancel(client: Client, out: Output, job_id: str) -> None:
    """Cancel JOB_ID: a queued job at once, a running one at its next heartbeat."""
    job = client.cancel_job(job_id)
    message = (
        f"Job {job.id} cancelled."
        if job.status == "cancelled"
        else f"Cancel requested; job {job.id} stops at its next heartbeat."
    )
    out.result(job, message)


@jobs.command(epilog=EPILOG)
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Stream new events until the job ends (SSE).")
@click.option("--after", type=click.IntRange(min=0), default=None, help="Only events after id.")
@api_command
def events(client: Client, out: Output, job_id: str, follow: bool, after: int | None) -> None:
    """The event log of JOB_ID, oldest first.

    --json prints an array; with --follow, one JSON event per line as they arrive.
    """
    if not follow:
        found = list(client.iter_events(job_id, after))
        if out.as_json:
            out.result(found)
        else:
            for event in found:
                out.stdout.print(event_line(event), markup=False)
        return
    for event in client.stream_events(job_id, after):
        if out.as_json:
            out.json_line(event)
        else:
            out.stdout.print(event_line(event), markup=False)


@jobs.command(epilog=EPILOG)
@click.argument("job_id")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dir",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to put the files (same as FOLDER; default: ./JOB_ID).",
)
@click.option("--name", "names", multiple=True, help="Only this artifact; repeatable.")
@api_command
def download(
    client: Client,
    out: Output,
    job_id: str,
    folder: Path | None,
    dest: Path | None,
    names: tuple[str, ...],
) -> None:
    """Download JOB_ID's artifacts into FOLDER (or --dir), resuming partial files and checking
    every sha256."""
    if folder is not None and dest is not None and folder != dest:
        raise click.UsageError("give the folder once: as FOLDER or as --dir")
    folder = folder or dest or Path(job_id)
    paths = client.download_all(job_id, folder, list(names) or None)
    out.result(
        [{"name": p.relative_to(folder.resolve()).as_posix(), "path": p} for p in paths],
        "\n".join(str(p) for p in paths) or "No artifacts.",
    )


@jobs.command(epilog=EPILOG)
@click.argument("job_id")
@poll_option
@api_command
def wait(client: Client, out: Output, job_id: str, poll_interval: float) -> ExitCode:
    """Wait for JOB_ID to end, showing progress, then its rounds if it succeeded; the exit code
    tells how it ended."""
    job: Job = wait_for(client, out, job_id, poll_interval)
    out.note(outcome(job))
    show_end(client, out, job)
    return JOB_STATUS_EXIT[job.status]
