"""Waiting for a job from the command line: live progress, Ctrl-C leaves the job running, and
the job's final status becomes the exit code; a human then sees the table of its rounds."""

from __future__ import annotations

import click

from api_schemas.jobs import Job
from client.commands.output import Output
from client.commands.progress import ProgressView
from client.commands.render import rounds_table
from client.exit_codes import ExitCode
from client.sdk import Client

POLL_INTERVAL = 1.0


def wait_for(client: Client, out: Output, job_id: str, poll_interval: float) -> Job:
    """Follow ``job_id`` to its end with a progress display on stderr. On Ctrl-C, say how to
    reattach and exit 130; the job keeps running on the server."""
    try:
        with ProgressView(client, job_id, out.stderr) as view:
            return client.wait(job_id, on_progress=view.update, poll_interval=poll_interval)
    except KeyboardInterrupt:
        out.note(
            f"\nStopped waiting; job {job_id} keeps running. Reattach with: lth jobs wait {job_id}"
        )
        raise click.exceptions.Exit(int(ExitCode.INTERRUPTED)) from None


def show_end(client: Client, out: Output, job: Job) -> None:
    """The ended job: JSON with ``--json``; for a human, the rounds of a job that succeeded."""
    if out.as_json or job.status != "succeeded" or job.result is None:
        out.result(job)
        return
    out.result(job, rounds_table(client.rounds(job.id), job.result.ticket_round))


#: ``--poll-interval`` of the commands that wait.
poll_option = click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=POLL_INTERVAL,
    show_default=True,
    help="Seconds between status polls while waiting.",
)
