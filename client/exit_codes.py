"""Exit codes of the ``lth`` client commands, one per outcome a pipeline may branch on.

They are part of the command line's contract: scripts test ``$?`` instead of parsing output, so
a code never changes meaning.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What an ``lth`` client command's exit status means (see :data:`MEANINGS`)."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    JOB_CANCELLED = 3
    UNREACHABLE = 4
    AUTH = 5
    NOT_FOUND = 6
    API_ERROR = 7
    INTERRUPTED = 130


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success; for a command that waited on a job: the job succeeded",
    ExitCode.JOB_FAILED: "the job failed",
    ExitCode.USAGE: "usage error: bad options, or an invalid spec or request (422)",
    ExitCode.JOB_CANCELLED: "the job was cancelled",
    ExitCode.UNREACHABLE: "the server could not be reached, even after retries",
    ExitCode.AUTH: "authentication error: the API key is missing, unknown or revoked (401)",
    ExitCode.NOT_FOUND: "no such job, artifact or dataset (404)",
    ExitCode.API_ERROR: "any other error from the server, or a failed integrity check",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); a job being waited on keeps running",
}


#: Exit status of a command that waited for a job to end, by the job's final status.
JOB_STATUS_EXIT: dict[str, ExitCode] = {
    "succeeded": ExitCode.OK,
    "failed": ExitCode.JOB_FAILED,
    "cancelled": ExitCode.JOB_CANCELLED,
}

#: The table shown at the end of every client command's ``--help``.
EPILOG = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):>3}  {meaning}" for code, meaning in MEANINGS.items()
)
