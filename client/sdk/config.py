"""Where the service is and how to talk to it, resolved once from arguments and the environment.

Pipelines configure the client through ``LTH_URL`` and ``LTH_API_KEY`` so that no secret has to
appear on a command line; an explicit argument still wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: SSE streams idle up to the server's keepalive (15 s); reads wait at least this long.
STREAM_READ_TIMEOUT = 60.0


def _user_agent() -> str:
    try:
        return f"lth-client/{version('lottery-ticket-service')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "lth-client"


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs besides its transport."""

    url: str
    api_key: str | None
    timeout: float
    retries: int
    backoff: float
    max_backoff: float = MAX_BACKOFF

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> ClientConfig:
        """Arguments first, then ``LTH_URL`` / ``LTH_API_KEY``, then the local default."""
        if retries < 0:
            raise ValueError("retries must be >= 0")
        return cls(
            url=(url or os.environ.get("LTH_URL") or DEFAULT_URL).rstrip("/"),
            api_key=api_key or os.environ.get("LTH_API_KEY") or None,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )

    def stream_timeout(self) -> httpx.Timeout:
        """Timeouts for an SSE stream: reads outlast the server's keepalive interval."""
        return httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT))

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers
