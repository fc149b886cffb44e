"""Errors the store raises for outcomes a caller must handle differently from a bug."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's expected failures."""


class IdempotencyConflictError(StoreError):
    """An Idempotency-Key was reused with a different request body."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key
        self.job_id = job_id


class TooManyActiveJobsError(StoreError):
    """The tenant already has its maximum number of queued or running jobs."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} jobs are queued or running; the limit is {limit}")
        self.active = active
        self.limit = limit


class InvalidCursorError(StoreError, ValueError):
    """A pagination cursor that this store did not hand out (or that was altered)."""


class UnknownTenantError(StoreError, LookupError):
    """A tenant id that does not exist."""
