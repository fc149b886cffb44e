"""What every client command shares: connection options, ``--json``, and turning SDK errors
into the documented exit codes (:mod:`client.exit_codes`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from client.commands.output import Output
from client.exit_codes import EPILOG, JOB_STATUS_EXIT, ExitCode
from client.sdk import (
    ApiError,
    Client,
    LthError,
    NotFound,
    Unauthorized,
    Unreachable,
    ValidationFailed,
)
from client.sdk.config import DEFAULT_RETRIES

__all__ = ["EPILOG", "JOB_STATUS_EXIT", "ExitCode", "Output", "api_command"]

CommandFn = Callable[..., ExitCode | None]


def _problem_json(exc: LthError) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        return exc.problem.model_dump(mode="json", exclude_none=True)
    return {"type": type(exc).__name__, "detail": str(exc)}


def _fail(out: Output, exc: LthError, code: ExitCode, hint: str | None = None) -> None:
    if out.as_json:
        out.json_line({"error": _problem_json(exc), "exit_code": int(code)})
    out.note(f"Error: {exc}")
    if isinstance(exc, ValidationFailed) and exc.detail:
        for error in exc.errors:
            out.note(f"  {error.loc or '(body)'}: {error.msg}")
    if hint:
        out.note(hint)
    raise click.exceptions.Exit(int(code))


@contextmanager
def exit_codes(out: Output, url: str) -> Iterator[None]:
    """Report an SDK error the way scripts and humans need it, and exit with its code."""
    try:
        yield
    except Unreachable as exc:
        _fail(out, exc, ExitCode.UNREACHABLE, f"Is the service running at {url}? (--url, LTH_URL)")
    except Unauthorized as exc:
        _fail(out, exc, ExitCode.AUTH, "Check the API key (--api-key, LTH_API_KEY).")
    except NotFound as exc:
        _fail(out, exc, ExitCode.NOT_FOUND)
    except ValidationFailed as exc:
        _fail(out, exc, ExitCode.USAGE)
    except LthError as exc:
        _fail(out, exc, ExitCode.API_ERROR)
    except KeyboardInterrupt:
        out.note("Interrupted.")
        raise click.exceptions.Exit(int(ExitCode.INTERRUPTED)) from None


def api_command(fn: CommandFn) -> Callable[..., None]:
    """Give a command ``--url``, ``--api-key``, ``--retries`` and ``--json``; call it with a
    connected :class:`Client` and an :class:`Output`; exit with the code it returns."""

    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print machine-readable JSON on stdout (and nothing else there).",
    )
    @click.option(
        "--retries",
        type=click.IntRange(min=0),
        default=DEFAULT_RETRIES,
        show_default=True,
        envvar="LTH_RETRIES",
        help="Retries on connection errors, 429 and 503 (env LTH_RETRIES).",
    )
    @click.option(
        "--api-key",
        envvar="LTH_API_KEY",
        default=None,
        help="API key, sent as a Bearer token (env LTH_API_KEY).",
    )
    @click.option(
        "--url",
        envvar="LTH_URL",
        default=None,
        help="Service URL (env LTH_URL; default http://127.0.0.1:8000).",
    )
    @functools.wraps(fn)
    def command(
        url: str | None, api_key: str | None, retries: int, as_json: bool, **kwargs: Any
    ) -> None:
        out = Output(as_json)
        with Client(url, api_key, retries=retries) as client, exit_codes(out, client.config.url):
            code = fn(client, out, **kwargs)
        raise click.exceptions.Exit(int(code or ExitCode.OK))

    return command
