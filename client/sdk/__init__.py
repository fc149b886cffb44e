"""Python SDK of the lth service: submit pruning jobs, follow them, fetch verified artifacts.

Usage::

    from client.sdk import Client

    with Client() as lth:  # LTH_URL and LTH_API_KEY from the environment
        job = lth.create_job(spec)  # a JobSpec or a dict
        job = lth.wait(job.id, on_progress=print)
        if job.status == "succeeded":
            lth.download_all(job.id, Path("out"))  # sha256-checked, resumable
            model = lth.load_ticket(job.id)  # torch module, mask applied

:class:`AsyncClient` offers the same methods for asyncio. Every failure raises a subclass of
:class:`LthError`. :func:`apply_mask` puts a mask (``Client.masks``) onto any module.
"""

from client.sdk.async_client import AsyncClient
from client.sdk.errors import (
    ApiError,
    ChecksumMismatch,
    Conflict,
    JobNotSucceeded,
    LthError,
    MaskMismatch,
    NotFound,
    RateLimited,
    Unauthorized,
    UnexpectedResponse,
    Unreachable,
    ValidationFailed,
    WaitTimeout,
)
from client.sdk.sync_client import Client
from client.sdk.tickets import apply_mask

__all__ = [
    "ApiError",
    "AsyncClient",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "JobNotSucceeded",
    "LthError",
    "MaskMismatch",
    "NotFound",
    "RateLimited",
    "Unauthorized",
    "UnexpectedResponse",
    "Unreachable",
    "ValidationFailed",
    "WaitTimeout",
    "apply_mask",
]
