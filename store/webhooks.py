"""Completion webhooks, signed the Standard Webhooks way and sent with retries.

Headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, keyed with the base64-decoded part of a ``whsec_`` secret, so
receivers can verify them with any Standard Webhooks library. Destinations are restricted to an
allowlist of hosts: a job spec must not turn the service into a proxy into its own network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from api_schemas.jobs import EventType

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def host_allowed(url: str, allowlist: Sequence[str]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == allowed.lower() for allowed in allowlist)


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def payload(job: Any, event: str) -> dict[str, Any]:
    """The body: the event type and the job's outcome (never the spec: it may hold paths)."""
    return {
        "type": f"job.{event}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {
            "id": job.id,
            "status": job.status,
            "name": job.name,
            "labels": job.labels,
            "attempt": job.attempt,
            "result": job.result,
            "error": (
                {"code": job.error_code, "message": job.error_message} if job.error_code else None
            ),
        },
    }


def deliver(
    url: str,
    body: dict[str, Any],
    *,
    secret: str,
    message_id: str,
    attempts: int = 5,
    timeout_s: float = 10.0,
    first_backoff_s: float = 1.0,
) -> tuple[bool, str]:
    """POST ``body`` until a 2xx answers or ``attempts`` run out; returns (delivered, detail).

    The same ``message_id`` is sent on every try, so receivers can drop duplicates.
    """
    content = json.dumps(body, separators=(",", ":")).encode()
    detail = "not tried"
    for attempt in range(attempts):
        if attempt:
            time.sleep(first_backoff_s * 2 ** (attempt - 1))
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, content),
        }
        try:
            response = httpx.post(
                url, content=content, headers=headers, timeout=timeout_s, follow_redirects=False
            )
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            continue
        if 200 <= response.status_code < 300:
            return True, f"HTTP {response.status_code} after {attempt + 1} attempt(s)"
        detail = f"HTTP {response.status_code}"
        if response.status_code not in RETRY_STATUSES:
            break
    log.warning("webhook %s to %s not delivered: %s", message_id, url, detail)
    return False, detail


def notify_completion(sessions: Any, job_id: str, settings: Any) -> bool | None:
    """Send the job's completion webhook if its spec asks for one; records the outcome as an
    event. Returns None when there was nothing to send."""
    from store.events import add_event
    from store.jobs import load_job

    with sessions() as session:
        job = load_job(session, job_id)
    if job is None or job.status not in ("succeeded", "failed", "cancelled"):
        return None
    url = (job.spec or {}).get("webhook_url")
    if not url or settings.webhook_secret is None:
        return None
    if not host_allowed(url, settings.webhook_allowlist):
        delivered, detail = False, "host no longer in the webhook allowlist"
    else:
        delivered, detail = deliver(
            url,
            payload(job, job.status),
            secret=settings.webhook_secret,
            message_id=f"msg_{job.id}_{job.status}",
            attempts=settings.webhook_attempts,
        )
    with sessions.begin() as session:
        kind: EventType = "message" if delivered else "warning"
        text = f"webhook {'delivered' if delivered else 'not delivered'}: {detail}"
        add_event(session, job_id, kind, {"message": text, "webhook": url})
    return delivered
