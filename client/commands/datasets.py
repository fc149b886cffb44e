"""``lth datasets``: upload, list and delete datasets for ``dataset://<id>`` specs."""

from __future__ import annotations

from pathlib import Path

import click

from client.commands.common import EPILOG, Output, api_command
from client.commands.render import datasets_table
from client.sdk import Client


@click.group(epilog=EPILOG)
def datasets() -> None:
    """Upload your own data (.npz or .safetensors with x_train, y_train, x_test, y_test)."""


@datasets.command(epilog=EPILOG)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Display name (default: the file name).")
@api_command
def upload(client: Client, out: Output, file: Path, name: str | None) -> None:
    """Upload FILE; use the printed uri as dataset.uri in a spec."""
    dataset = client.upload_dataset(file, name)
    out.result(
        dataset,
        f"Uploaded {dataset.name} as {dataset.id}: {dataset.train_size} train / "
        f"{dataset.test_size} test examples of shape {dataset.input_shape}.\n"
        f"Use it as dataset.uri = {dataset.uri}",
    )


@datasets.command("list", epilog=EPILOG)
@api_command
def list_(client: Client, out: Output) -> None:
    """Your datasets, newest first (--json: an array)."""
    found = client.list_datasets()
    out.result(found, datasets_table(found) if found else "No datasets.")


@datasets.command(epilog=EPILOG)
@click.argument("dataset_id")
@api_command
def delete(client: Client, out: Output, dataset_id: str) -> None:
    """Delete DATASET_ID (queued jobs that use it will fail)."""
    client.delete_dataset(dataset_id)
    out.result({"deleted": dataset_id}, f"Deleted {dataset_id}.")
