"""An object of the artifact store as an HTTP response: whole, one byte range, or several.

What Starlette's ``FileResponse`` does for a file on disk, for any store: ``Accept-Ranges``,
``Last-Modified``, ``If-Range`` (the strong ETag or the date), one range → 206 with
``Content-Range``, several → ``multipart/byteranges`` laid out as Starlette lays it out, HEAD
without a body. A malformed ``Range`` is ignored (RFC 9110: the whole object); the route answers
an unsatisfiable one with a 416 problem before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from email.utils import formatdate
from secrets import token_hex
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.responses import (
    FileResponse,
    MalformedRangeHeader,
    RangeNotSatisfiable,
    Response,
    StreamingResponse,
)

from service.artifact_files import ArtifactFile
from store.artifact_store import ArtifactStore

Ranges = list[tuple[int, int]]  # half-open [start, end)


def unsatisfiable(http_range: str, size: int) -> bool:
    """Whether a well-formed ``Range`` lies wholly outside an object of ``size`` bytes."""
    try:
        FileResponse._parse_range_header(http_range, size)
    except RangeNotSatisfiable:
        return True
    except MalformedRangeHeader:
        return False
    return False


def content_disposition(filename: str) -> str:
    """``attachment`` with the file name, RFC 5987-encoded when it is not plain ASCII."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def _wanted(request: Headers, size: int, validators: tuple[str, ...]) -> Ranges | None:
    """The ranges to send (merged, as Starlette merges them), None for the whole object: no or
    a malformed ``Range``, too many ranges, or an ``If-Range`` naming another version (compared
    strongly: a weak tag never matches)."""
    http_range, if_range = request.get("range"), request.get("if-range")
    if http_range is None:
        return None
    if if_range is not None and (if_range.startswith("W/") or if_range not in validators):
        return None
    try:
        return FileResponse._parse_range_header(http_range, size) or None
    except (MalformedRangeHeader, RangeNotSatisfiable):
        return None


def _opened(store: ArtifactStore, key: str, start: int, end: int) -> Iterator[bytes]:
    """The chunks of ``[start, end)``, the object opened now (so errors raise before the
    response starts, while the route can still answer a problem)."""
    return store.open_range(key, start, end - 1) if end > start else iter(())


def _media(media_type: str) -> str:
    """The Content-Type Starlette sends for ``media_type`` (text/* gets ``charset=utf-8``)."""
    if media_type.startswith("text/") and "charset=" not in media_type.lower():
        return f"{media_type}; charset=utf-8"
    return media_type


def _multipart(
    store: ArtifactStore, artifact: ArtifactFile, ranges: Ranges, boundary: str, media_type: str
) -> tuple[int, Iterator[bytes]]:
    """Length and body of a ``multipart/byteranges`` answer; each part opens its range lazily."""

    def head(start: int, end: int) -> bytes:
        return (
            f"--{boundary}\r\nContent-Type: {_media(media_type)}\r\n"
            f"Content-Range: bytes {start}-{end - 1}/{artifact.size}\r\n\r\n"
        ).encode("latin-1")

    tail = f"--{boundary}--".encode("latin-1")
    length = sum(len(head(s, e)) + (e - s) + 2 for s, e in ranges) + len(tail)

    def body() -> Iterator[bytes]:
        for start, end in ranges:
            yield head(start, end)
            yield from _opened(store, artifact.key, start, end)
            yield b"\r\n"
        yield tail

    return length, body()


def object_response(
    store: ArtifactStore,
    artifact: ArtifactFile,
    *,
    method: str,
    request_headers: Headers,
    headers: Mapping[str, str],
) -> Response:
    """The answer to a GET or HEAD of ``artifact``; ``headers`` (its ETag, caching) are added."""
    last_modified = formatdate(artifact.modified.timestamp(), usegmt=True)
    out = {
        **headers,
        "Accept-Ranges": "bytes",
        "Last-Modified": last_modified,
        "Content-Disposition": content_disposition(artifact.name.rsplit("/", 1)[-1]),
    }
    validators = tuple(v for v in (out.get("ETag"), last_modified) if v)
    ranges = _wanted(request_headers, artifact.size, validators)
    media_type, status, head_only = artifact.media_type, 200, method == "HEAD"
    body: Iterator[bytes] | None = None
    if ranges is None:
        out["Content-Length"] = str(artifact.size)
        if not head_only:
            body = _opened(store, artifact.key, 0, artifact.size)
    elif len(ranges) == 1:
        (start, end), status = ranges[0], 206
        out["Content-Range"] = f"bytes {start}-{end - 1}/{artifact.size}"
        out["Content-Length"] = str(end - start)
        if not head_only:
            body = _opened(store, artifact.key, start, end)
    else:
        status, boundary = 206, token_hex(13)
        length, parts = _multipart(store, artifact, ranges, boundary, media_type)
        out["Content-Length"] = str(length)
        media_type = f"multipart/byteranges; boundary={boundary}"
        if not head_only:
            body = parts
    if body is None:
        return Response(status_code=status, headers=out, media_type=media_type)
    return StreamingResponse(body, status_code=status, headers=out, media_type=media_type)
