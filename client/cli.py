"""The ``lth`` command. Subcommands live beside the code they drive and load only when called,
so ``lth submit`` never imports torch and ``lth run`` never imports the web stack."""

from __future__ import annotations

import importlib
from typing import Any

import click

#: subcommand -> "module:attribute" of its click command.
COMMANDS: dict[str, str] = {
    "run": "worker.engine.cli:run",
    "worker": "worker.cli:worker",
    "worker-health": "worker.cli:health",
    "serve": "service.cli:serve",
    "keys": "service.cli:keys",
    "demo": "client.demo:demo",
    "submit": "client.commands.submit:submit",
    "jobs": "client.commands.jobs:jobs",
    "datasets": "client.commands.datasets:datasets",
    "models": "client.commands.models:models",
    "report": "client.commands.report:report",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented pattern)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(package_name="lottery-ticket-service", prog_name="lth")
def main() -> None:
    """Lottery-ticket model compression: find sparse, trainable subnetworks by iterative
    magnitude pruning with rewinding."""
