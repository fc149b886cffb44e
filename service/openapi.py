"""OpenAPI: problem responses as ``application/problem+json`` with the Problem schema, and the
links that lead from a created job to the operations on it."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api_schemas.problem import PROBLEM_MEDIA_TYPE, Problem

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting these status codes as problems."""
    return {code: {"model": Problem, "description": HTTPStatus(code).phrase} for code in codes}


#: What a job's id leads to: each operation (path, method) that takes it, by link name.
JOB_OPERATIONS: dict[str, tuple[str, str]] = {
    "GetJob": ("/v1/jobs/{job_id}", "get"),
    "CancelJob": ("/v1/jobs/{job_id}/cancel", "post"),
    "ListJobEvents": ("/v1/jobs/{job_id}/events", "get"),
    "ListArtifacts": ("/v1/jobs/{job_id}/artifacts", "get"),
    "GetRounds": ("/v1/jobs/{job_id}/rounds", "get"),
    "GetReport": ("/v1/jobs/{job_id}/report", "get"),
}


def operation_ref(path: str, method: str) -> str:
    """The ``operationRef`` of an operation of this document (a JSON Pointer in a fragment)."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{quote(pointer, safe='~')}/{method}"


def job_links() -> dict[str, dict[str, Any]]:
    """OpenAPI links from a response whose body is a job to the operations on that job."""
    return {
        name: {
            "operationRef": operation_ref(path, method),
            "parameters": {"job_id": "$response.body#/id"},
            "description": f"`{method.upper()} {path}` with the job's `id`.",
        }
        for name, (path, method) in JOB_OPERATIONS.items()
    }


_UNAVAILABLE: dict[str, Any] = {
    "description": "Service Unavailable: the job store is away for a moment; try again after "
    "`Retry-After` seconds.",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
}


def install_openapi(app: FastAPI) -> None:
    """Generate the schema once, rewriting every 4xx/5xx body (FastAPI's default 422 included)
    to the Problem schema under ``application/problem+json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                # Any operation may meet the job store down for a moment (see problems.py).
                operation.setdefault("responses", {}).setdefault("503", {**_UNAVAILABLE})
                for code, response in operation.get("responses", {}).items():
                    if code.isdigit() and int(code) >= 400:
                        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}
                        if code == "422":
                            response["description"] = "Invalid request: `errors` lists each field."
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        if "Problem" not in components:  # pragma: no cover - every app documents a problem
            components["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
