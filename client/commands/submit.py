"""``lth submit``: send a job spec file to the service, optionally wait and download the ticket."""

from __future__ import annotations

from pathlib import Path

import click

from client.commands.common import EPILOG, JOB_STATUS_EXIT, ExitCode, Output, api_command
from client.commands.render import outcome
from client.commands.spec_file import load_spec
from client.commands.waiting import poll_option, show_end, wait_for
from client.sdk import Client


@click.command(epilog=EPILOG)
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to end, showing progress.")
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="After success, download every artifact into this folder (implies --wait).",
)
@click.option(
    "--idempotency-key",
    default=None,
    help="Submitting again with the same key returns the first job instead of a new one "
    "(default: a fresh key, so only this command's own retries are deduplicated).",
)
@poll_option
@api_command
def submit(
    client: Client,
    out: Output,
    spec_file: Path,
    wait_: bool,
    download: Path | None,
    idempotency_key: str | None,
    poll_interval: float,
) -> ExitCode:
    """Submit the job in SPEC_FILE (JSON or YAML, a JobSpec).

    The spec is checked locally first; every invalid field is listed with its path. With
    --wait the exit code tells how the job ended and a job that succeeded shows its rounds;
    Ctrl-C stops waiting, not the job.
    """
    spec = load_spec(spec_file)
    job = client.create_job(spec, idempotency_key=idempotency_key)
    if not (wait_ or download):
        out.result(job, f"Submitted {job.id} ({job.status}). Follow it: lth jobs wait {job.id}")
        return ExitCode.OK
    out.note(f"Submitted {job.id}; waiting (Ctrl-C stops waiting, the job keeps running).")
    job = wait_for(client, out, job.id, poll_interval)
    out.note(outcome(job))
    if download is not None and job.status == "succeeded":
        paths = client.download_all(job.id, download)
        out.note(f"Downloaded {len(paths)} artifacts (sha256 checked) into {download}")
    show_end(client, out, job)
    return JOB_STATUS_EXIT[job.status]
