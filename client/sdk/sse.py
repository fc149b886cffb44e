"""Server-Sent Events: the line protocol, and the bookkeeping that makes a stream resumable.

The decoder follows the WHATWG rules the service's frames need (``id:``, ``event:``, ``data:``,
``retry:``, ``:`` comments, a blank line ends a message). :class:`EventStream` remembers the
last event id so that a dropped connection resumes with ``Last-Event-ID`` and no event is
delivered twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from api_schemas.jobs import Event
from client.sdk.errors import UnexpectedResponse
from client.sdk.retry import RetryPolicy


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    event: str
    data: str
    id: str | None


class Decoder:
    """Turns lines (without their line break) into messages."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        #: The latest ``retry:`` value, in seconds.
        self.retry: float | None = None

    def feed(self, line: str) -> Message | None:
        """Consume one line; a blank line returns the message it completes (if it had data)."""
        if not line:
            message = None
            if self._data:
                message = Message(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None


class EventStream:
    """State of one logical event stream across reconnections."""

    def __init__(self, policy: RetryPolicy, last_event_id: int | None) -> None:
        self.policy = policy
        self.last_event_id = last_event_id
        self.decoder = Decoder()
        self.failures = 0

    def connected(self) -> None:
        """A new connection starts: a partial message of the old one is discarded."""
        retry = self.decoder.retry
        self.decoder = Decoder()
        self.decoder.retry = retry

    def feed(self, line: str) -> Event | None:
        """One line of the stream; returns a job event once one is complete and new."""
        message = self.decoder.feed(line)
        if message is None:
            return None
        try:
            event = Event.model_validate_json(message.data)
        except ValidationError as exc:
            raise UnexpectedResponse(f"an SSE message is not a job event: {exc}") from exc
        if self.last_event_id is not None and event.id <= self.last_event_id:
            return None
        self.last_event_id = event.id
        self.failures = 0
        return event

    def reconnect_delay(self) -> float | None:
        """After a dropped connection: seconds to wait before reconnecting (the server's
        ``retry:`` hint, else backoff), or None once too many drops came without an event."""
        if self.failures >= self.policy.retries:
            return None
        delay = self.decoder.retry
        if delay is None:
            delay = self.policy.backoff_delay(self.failures)
        self.failures += 1
        return delay
