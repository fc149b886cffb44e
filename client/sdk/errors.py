# ruff: noqa: N818 - the names say what happened (NotFound, Unreachable); "Error" adds nothing
"""The SDK's exceptions: one base class, and the server's problem+json turned into fields.

Callers branch on the class (``except NotFound``) rather than on status codes, and still get
every RFC 9457 member (``status``, ``type``, ``title``, ``detail``, ``errors``) to show a user.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx
from pydantic import ValidationError

from api_schemas.jobs import Job
from api_schemas.problem import FieldError, Problem
from client.sdk.retry import retry_after


class LthError(Exception):
    """Base of every error the SDK raises."""


class Unreachable(LthError):
    """The server could not be reached (or the connection kept failing) after every retry."""

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach the lth service at {url}: {type(cause).__name__}: {cause}")
        self.url = url
        self.cause = cause


class UnexpectedResponse(LthError):
    """A success answer whose body is not what the API documents (a proxy, or version skew)."""


class ChecksumMismatch(LthError):
    """A downloaded file's sha256 differs from the one the server announced."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name}: sha256 {actual} does not match the expected {expected}")
        self.name = name
        self.expected = expected
        self.actual = actual


class WaitTimeout(LthError):
    """``wait`` gave up before the job ended; the job itself keeps running."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g} s")
        self.job = job


class JobNotSucceeded(LthError):
    """A ticket or mask was asked of a job that has not succeeded (still running, or ended
    otherwise): it has none yet, or never will."""

    def __init__(self, job: Job) -> None:
        reason = f" ({job.error.code}: {job.error.message})" if job.error else ""
        super().__init__(f"job {job.id} is {job.status}{reason}: only a succeeded job has a ticket")
        self.job = job


class MaskMismatch(LthError, ValueError):
    """A mask does not fit a module: a key the module lacks, or a shape that differs."""


class ApiError(LthError):
    """The server answered with an error: the fields of its problem+json body."""

    def __init__(self, problem: Problem, headers: httpx.Headers | None = None) -> None:
        self.problem = problem
        self.status: int = problem.status
        self.type: str = problem.type
        self.title: str = problem.title
        self.detail: str | None = problem.detail
        self.instance: str | None = problem.instance
        self.errors: list[FieldError] = list(problem.errors or [])
        self.headers = headers if headers is not None else httpx.Headers()
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.status} {self.title}" + (f": {self.detail}" if self.detail else "")
        if self.errors and not self.detail:
            text += "".join(f"\n  {e.loc or '(body)'}: {e.msg}" for e in self.errors)
        return text

    @property
    def extensions(self) -> dict[str, Any]:
        """Problem members beyond the standard ones (e.g. ``limit`` on a 429)."""
        return dict(self.problem.model_extra or {})


class Unauthorized(ApiError):
    """401/403: the API key is missing, unknown, revoked or not allowed to do this."""


class NotFound(ApiError):
    """404: no such job, artifact, dataset or model (or it belongs to another tenant)."""


class Conflict(ApiError):
    """409: e.g. cancelling a finished job, or an Idempotency-Key reused with another body."""


class ValidationFailed(ApiError):
    """422: the request is invalid; ``errors`` names each field (``pruning.rewind_to``)."""


class RateLimited(ApiError):
    """429: too many active jobs or requests; ``retry_after`` is the server's hint, if any."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
}


def _problem(response: httpx.Response) -> Problem:
    status = response.status_code
    try:
        return Problem.model_validate(response.json() | {"status": status})
    except (ValueError, TypeError, ValidationError):
        pass
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    text = response.text.strip()[:500] or None
    return Problem(title=title, status=status if 400 <= status <= 599 else 500, detail=text)


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error response (its body must have been read)."""
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(_problem(response), response.headers)
