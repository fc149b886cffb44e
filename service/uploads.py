"""Streamed multipart upload straight to a temporary file, with a hard size cap.

Starlette's form parser has no total cap and spools everything first. Here the body is read
chunk by chunk: a declared Content-Length over the cap is refused (413) before one byte is read,
and an undeclared (chunked) body is cut off the moment it passes the cap. The file part is
hashed while written, into the destination folder so the final rename is atomic.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api_schemas.problem import FieldError
from service.problems import ProblemError, validation_problem

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: Room for the multipart framing and small text fields on top of the file itself.
FRAMING_ALLOWANCE = 64 * 1024
MAX_TEXT_FIELD = 1024


@dataclass
class ReceivedFile:
    """The uploaded file, complete, in a temporary path the caller renames or deletes."""

    path: Path
    filename: str
    size: int
    sha256: str


@dataclass
class ReceivedForm:
    """The file part (if any) and the small text fields."""

    file: ReceivedFile | None = None
    fields: dict[str, str] = field(default_factory=dict)


class _TooLargeError(Exception):
    pass


def too_large(limit: int) -> ProblemError:
    """The 413 for an upload over ``limit`` bytes."""
    return ProblemError(
        413,
        f"The upload is larger than this service accepts ({limit} bytes).",
        kind="upload-too-large",
        max_bytes=limit,
    )


class _Receiver:
    """python-multipart callbacks writing the file part to disk and keeping text fields."""

    def __init__(self, file_field: str, dest_dir: Path, max_file_bytes: int) -> None:
        self.file_field = file_field
        self.dest_dir = dest_dir
        self.max_file_bytes = max_file_bytes
        self.form = ReceivedForm()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._handle: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._text: bytearray | None = None
        self._text_name = ""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._text = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name == self.file_field and filename is not None:
            if self.form.file is not None:
                raise validation_problem(
                    [FieldError(loc=name, msg="send exactly one file", type="too_many_files")]
                )
            path = self.dest_dir / f".upload-{secrets.token_hex(8)}.tmp"
            self._handle = path.open("xb")
            self.form.file = ReceivedFile(
                path, Path(filename.decode("utf-8", "replace")).name, 0, ""
            )
        elif filename is None:
            self._text, self._text_name = bytearray(), name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._handle is not None and self.form.file is not None:
            self.form.file.size += len(chunk)
            if self.form.file.size > self.max_file_bytes:
                raise _TooLargeError
            self._digest.update(chunk)
            self._handle.write(chunk)  # small blocking write; the page cache absorbs it
        elif self._text is not None:
            self._text += chunk
            if len(self._text) > MAX_TEXT_FIELD:
                raise validation_problem(
                    [
                        FieldError(
                            loc=self._text_name,
                            msg=f"text fields are limited to {MAX_TEXT_FIELD} bytes",
                            type="too_long",
                        )
                    ]
                )

    def _part_end(self) -> None:
        if self._handle is not None and self.form.file is not None:
            self._handle.close()  # the store makes it durable, off the event loop
            self._handle = None
            self.form.file.sha256 = self._digest.hexdigest()
        elif self._text is not None:
            self.form.fields[self._text_name] = self._text.decode("utf-8", "replace")
            self._text = None

    def discard(self) -> None:
        """Remove the partial file after a failure."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.form.file is not None:
            self.form.file.path.unlink(missing_ok=True)


async def receive_file(
    request: Request, *, file_field: str, dest_dir: Path, max_file_bytes: int
) -> ReceivedForm:
    """Read a ``multipart/form-data`` body with at most one file (``file_field``) to disk."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ProblemError(
            415, "Send the file as multipart/form-data.", kind="unsupported-media-type"
        )
    max_body = max_file_bytes + FRAMING_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise too_large(max_file_bytes)
    dest_dir.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(file_field, dest_dir, max_file_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise _TooLargeError
            parser.write(chunk)
        parser.finalize()
    except _TooLargeError:
        receiver.discard()
        raise too_large(max_file_bytes) from None
    except FormParserError as exc:
        receiver.discard()
        raise ProblemError(400, f"Malformed multipart body: {exc}", kind="bad-multipart") from exc
    except BaseException:  # problems, client disconnects, cancellation: leave nothing behind
        receiver.discard()
        raise
    if receiver.form.file is not None and receiver.form.file.sha256 == "":
        receiver.discard()  # the body ended inside the file part
        raise ProblemError(400, "The multipart body ended mid-file.", kind="bad-multipart")
    return receiver.form
