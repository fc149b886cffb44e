"""``lth models``: the architectures the service can build."""

from __future__ import annotations

import click

from client.commands.common import EPILOG, Output, api_command
from client.commands.render import models_table
from client.sdk import Client


@click.command(epilog=EPILOG)
@api_command
def models(client: Client, out: Output) -> None:
    """Built-in architectures for model.arch (any torchvision:<name> works too)."""
    found = client.list_models()
    out.result(found, models_table(found))
