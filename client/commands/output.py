"""Where command output goes: results on stdout (JSON with ``--json``), chatter on stderr.

Keeping stdout for results only is what lets a pipeline pipe ``lth ... --json`` into ``jq``
while progress and hints still reach a human on the terminal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel
from rich.console import Console, RenderableType


def jsonable(value: Any) -> Any:
    """Models, paths and containers of them as plain JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [jsonable(v) for v in value]
    return value


#: Width for output that is not a terminal (logs, pipes): wide enough that ids never wrap.
PIPE_WIDTH = 200


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


class Output:
    """One command's two channels."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.stdout = _console(stderr=False)
        self.stderr = _console(stderr=True)

    def result(self, data: Any, human: RenderableType | None = None) -> None:
        """The command's result: ``data`` as JSON with ``--json``, else ``human`` (if any)."""
        if self.as_json:
            click.echo(json.dumps(jsonable(data), indent=2))
        elif human is not None:
            self.stdout.print(human)

    def json_line(self, data: Any) -> None:
        """One compact JSON document per line (for streams such as ``--follow``)."""
        click.echo(json.dumps(jsonable(data), separators=(",", ":")))

    def note(self, message: str) -> None:
        """A message for humans, never mixed into the results (plain text, no markup)."""
        click.echo(message, err=True)
