"""Every error as RFC 9457 ``application/problem+json``.

Validation errors name the exact field inside the body (``pruning.rewind_to``), including errors
raised by a model-level validator, which pydantic reports at the enclosing model: the message
names the field, so the location is moved onto it.

A 405 lists in ``Allow`` every method the path serves: Starlette names only those of the first
route whose path matched, and each method of a path is a route of its own here.
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Union, get_args, get_origin

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as db_errors
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from api_schemas.problem import PROBLEM_MEDIA_TYPE, FieldError, Problem
from api_schemas.text import NO_NUL_PATTERN, NUL_MESSAGE

log = logging.getLogger(__name__)

PROBLEM_TYPE_PREFIX = "urn:lth:problem:"
_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NEEDS = re.compile(r"\bneeds ([A-Za-z_][A-Za-z0-9_]*)")


class ProblemError(Exception):
    """Raise from a route to answer with a problem; ``kind`` becomes ``urn:lth:problem:<kind>``."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.extensions = extensions


def not_found(what: str) -> ProblemError:
    """The one 404 for a missing object *and* another tenant's: the bodies must not differ."""
    return ProblemError(404, f"No {what} with this id.", kind="not-found")


def validation_problem(errors: Sequence[FieldError]) -> ProblemError:
    """A 422 listing ``errors``."""
    count = len(errors)
    summary = "; ".join(f"{e.loc or '(body)'}: {e.msg}" for e in errors[:3])
    detail = f"The request has {count} invalid field{'s' if count != 1 else ''}: {summary}"
    return ProblemError(422, detail, kind="validation", errors=errors)


def problem_response(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[FieldError] | None = None,
    **extensions: Any,
) -> Response:
    """Render a problem body for ``request``."""
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + kind if kind else "about:blank",
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=list(errors) if errors is not None else None,
        **extensions,
    )
    body = problem.model_dump(mode="json", exclude_none=True)
    if status == 304 or request.method == "HEAD":
        return Response(status_code=status, headers=dict(headers or {}))
    return JSONResponse(body, status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


# ----------------------------------------------------------------------------- validation


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → X; a union of several types → None (no single model to descend into)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else None
    return annotation


def _model_at(root: type[BaseModel] | None, path: Sequence[str | int]) -> Any:
    """The model (or other type) found by following ``path`` from ``root``."""
    current: Any = root
    for part in path:
        current = _unwrap(current)
        origin = get_origin(current)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset):
            current = get_args(current)[0] if get_args(current) else None
        elif isinstance(part, str) and origin is dict:
            args = get_args(current)
            current = args[1] if len(args) == 2 else None
        elif (
            isinstance(part, str)
            and isinstance(current, type)
            and issubclass(current, BaseModel)
            and part in current.model_fields
        ):
            current = current.model_fields[part].annotation
        else:
            return None
    return _unwrap(current)


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _field_named_in(message: str, model: type[BaseModel]) -> list[str] | None:
    """The field path (relative to ``model``) a model-level error message is about."""
    candidates = [m.group(1) for m in _NEEDS.finditer(message)]
    candidates += [m.group(0) for m in _IDENTIFIER.finditer(message)]
    for candidate in candidates:
        path = candidate.split(".")
        parent = _model_at(model, path[:-1])
        if _is_model(parent) and path[-1] in parent.model_fields:
            return path
    return None


def dotted(loc: Sequence[str | int]) -> str:
    """``("training", "milestones", 0)`` → ``training.milestones[0]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def field_errors(raw_errors: Sequence[Any], body_model: type[BaseModel] | None) -> list[FieldError]:
    """Pydantic/FastAPI error dicts → :class:`FieldError` with dotted paths and clear messages."""
    result: list[FieldError] = []
    for raw in raw_errors:
        loc: list[str | int] = list(raw.get("loc", ()))
        kind = str(raw.get("type", "value_error"))
        msg = str(raw.get("msg", "invalid value")).removeprefix("Value error, ")
        source = loc[0] if loc else "body"
        path = loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else loc
        if kind == "string_pattern_mismatch" and _pattern_of(raw) == NO_NUL_PATTERN:
            kind, msg = "nul_character", NUL_MESSAGE
        elif source == "body" and kind == "json_invalid":
            path = []
            reason = (raw.get("ctx") or {}).get("error")
            msg = f"the body is not valid JSON ({reason})" if reason else "the body is not JSON"
        elif source == "body" and body_model is not None:
            target = _model_at(body_model, path)
            if kind == "extra_forbidden":
                parent = _model_at(body_model, path[:-1])
                if _is_model(parent):
                    allowed = ", ".join(parent.model_fields)
                    msg = f"unknown field {path[-1]!r}; allowed here: {allowed}"
            elif kind == "value_error" and _is_model(target):
                refined = _field_named_in(msg, target)
                if refined is not None:
                    path = [*path, *refined]
        text = dotted(path)
        if source != "body":
            text = f"{source}.{text}" if text else str(source)
        result.append(FieldError(loc=text, msg=msg, type=kind))
    return result


def _pattern_of(raw: Any) -> object:
    return (raw.get("ctx") or {}).get("pattern")


def _body_model(request: Request) -> type[BaseModel] | None:
    route = request.scope.get("route")
    body_field = getattr(route, "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    return annotation if _is_model(annotation) else None


# ----------------------------------------------------------------------------- handlers


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        exc.status,
        exc.detail,
        kind=exc.kind,
        title=exc.title,
        headers=exc.headers,
        errors=exc.errors,
        **exc.extensions,
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problem = validation_problem(field_errors(exc.errors(), _body_model(request)))
    return await _on_problem(request, problem)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches at the request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail and exc.detail != phrase else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
    return problem_response(request, exc.status_code, detail, headers=headers)


#: What the database raises while it cannot serve (PEP 249's OperationalError and
#: InterfaceError: down, restarting, unreachable, locked, out of connections), and the wait
#: suggested to clients before they try again.
DATABASE_UNAVAILABLE = (
    db_errors.OperationalError,
    db_errors.InterfaceError,
    db_errors.TimeoutError,
)
DATABASE_RETRY_AFTER_S = 5


async def _on_database_unavailable(request: Request, exc: Exception) -> Response:
    """503, not 500: the request was fine and will succeed once the database is back (the
    engine's pre-ping replaces dead connections, so recovery needs no restart)."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request,
        503,
        "The job store is unavailable for a moment; try again shortly.",
        kind="database-unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, 500, "The server failed to handle this request; it has been logged."
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through problem+json."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    for error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error, _on_database_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)
