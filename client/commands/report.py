"""``lth report``: save a job's visual report (HTML page and PNG summary) to a folder."""

from __future__ import annotations

from pathlib import Path

import click

from client.commands.common import EPILOG, Output, api_command
from client.sdk import Client


@click.command(epilog=EPILOG)
@click.argument("job_id")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="Folder for report.html and report.png.",
)
@api_command
def report(client: Client, out: Output, job_id: str, out_dir: Path) -> None:
    """Save JOB_ID's report: accuracy versus weights remaining for the ticket and its controls,
    early stopping, layer densities, training curves and the rounds table (works offline)."""
    saved = client.download_report(job_id, out_dir)
    paths = {name: str(path) for name, path in saved.items()}
    out.result(paths, "\n".join(f"{name}: {path}" for name, path in paths.items()))
