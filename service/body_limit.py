"""A cap on request bodies, counted as they arrive: 413 problem+json beyond it.

A declared Content-Length over the cap is refused before the app runs. Otherwise (chunked
bodies, or a Content-Length that lies) the bytes are counted as the app reads them, and the
read that passes the cap fails: whatever the app answers to that failure (FastAPI turns it into
a 400) is dropped and the 413 sent instead. Paths that stream their own capped upload
(dataset and model uploads, :mod:`service.uploads`) are exempt.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import problem_response


class BodyTooLargeError(Exception):
    """Raised to the app by the read that passes the cap."""


class BodyLimitMiddleware:
    """Pure ASGI, so streamed responses and bodies pass through untouched."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        overrun = started = False

        async def counting_receive() -> Message:
            nonlocal received, overrun
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overrun = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overrun:
                return  # the app's answer to the failed read; the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overrun or started:
                raise
        if overrun and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            Request(scope),
            413,
            f"The request body is larger than this service accepts ({self.max_bytes} bytes).",
            kind="body-too-large",
            max_bytes=self.max_bytes,
        )
        await response(scope, receive, send)
