"""Reading a job spec file (JSON or YAML) and checking it locally before it is sent.

The local check uses the shared contract (:class:`api_schemas.spec.JobSpec`) for fast feedback
with field paths; the server remains the judge (it also checks data roots, limits and uploads),
and its 422 answer is reported the same way. The engine is never imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from api_schemas.spec import JobSpec
from api_schemas.specfile import parse_spec_text
from client.exit_codes import ExitCode


class SpecFileError(click.ClickException):
    """An unreadable or invalid spec file: a usage error (exit 2) listing every field."""

    exit_code = int(ExitCode.USAGE)

    def __init__(self, path: Path, problem: str, fields: Sequence[str] = ()) -> None:
        super().__init__("\n".join([f"{path}: {problem}", *(f"  {f}" for f in fields)]))


def dotted(loc: Sequence[str | int]) -> str:
    """``("training", "milestones", 0)`` → ``training.milestones[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _parse(path: Path, text: str) -> Any:
    json_only = path.suffix.lower() == ".json"  # YAML is a superset of JSON: others are YAML
    try:
        return parse_spec_text(text, json_only=json_only)
    except ValueError as exc:
        raise SpecFileError(path, f"not valid {'JSON' if json_only else 'YAML'}: {exc}") from exc


def load_spec(path: Path) -> dict[str, Any]:
    """The spec in ``path`` as a mapping, after the local validation."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecFileError(path, f"cannot read it: {exc}") from exc
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise SpecFileError(path, "a job spec must be a mapping of fields (model, dataset, ...)")
    try:
        JobSpec.model_validate(data)
    except ValidationError as exc:
        fields = [
            f"{dotted(e['loc']) or '(spec)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        count = len(fields)
        raise SpecFileError(
            path, f"invalid job spec ({count} field{'s' if count != 1 else ''})", fields
        ) from exc
    return data
