"""When to retry a request and how long to wait first: the one policy both clients follow.

Only failures that say "try again later" are retried: a connection that could not be made, 429
and 503 (waiting ``Retry-After`` when the server sends it). A request that may already have
reached the server is repeated only when repeating it is harmless (GET, DELETE, or a POST that
carries an Idempotency-Key), so a retry can never create a second job.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})
#: Errors raised before a request left the client: retrying them is always safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: The longest ``Retry-After`` obeyed; a larger hint is cut to this.
MAX_RETRY_AFTER = 300.0


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if present."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt k waits about ``backoff * 2**k`` seconds."""

    retries: int
    backoff: float
    max_backoff: float

    def backoff_delay(self, attempt: int) -> float:
        """Delay before retry ``attempt + 1``: uniform in [cap/2, cap] ("equal jitter"), so
        clients that failed together do not come back together."""
        cap = min(self.max_backoff, self.backoff * 2**attempt)
        return random.uniform(cap / 2, cap)

    def attempts(self, idempotent: bool) -> Attempts:
        """Fresh retry bookkeeping for one logical request."""
        return Attempts(self, idempotent)


class Attempts:
    """The retry decisions for one logical request; each method answers the delay before the
    next try, or None to give up (the caller then raises)."""

    def __init__(self, policy: RetryPolicy, idempotent: bool) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self.made = 0

    def _next(self, hint: float | None) -> float | None:
        if self.made >= self.policy.retries:
            return None
        delay = self.policy.backoff_delay(self.made) if hint is None else hint
        self.made += 1
        return min(delay, MAX_RETRY_AFTER)

    def after_error(self, error: httpx.TransportError) -> float | None:
        """A transport failure: retried if the request never left, or may safely repeat."""
        if isinstance(error, _NOT_SENT) or self.idempotent:
            return self._next(None)
        return None

    def after_response(self, response: httpx.Response) -> float | None:
        """An error status: only 429 and 503 are worth another try."""
        if response.status_code not in RETRY_STATUSES:
            return None
        return self._next(retry_after(response.headers))
