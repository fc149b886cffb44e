"""Liveness, readiness and Prometheus metrics (outside /v1, no authentication)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from service.deps import StateDep
from service.openapi import problems
from service.problems import problem_response

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    """The process serves requests."""

    status: str = Field(description="Always `ok`.")


class Readiness(BaseModel):
    """Every dependency answered."""

    status: str = Field(description="`ready`.")
    checks: dict[str, str] = Field(description="Each check's name and `ok`.")


@router.get("/healthz", summary="Liveness")
def healthz() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    description="Runs every readiness check (database, broker, and those the worker package "
    "adds). 503 problem with `checks` naming each failure.",
    response_model=Readiness,
    responses=problems(503),
)
def readyz(request: Request, state: StateDep) -> Readiness | Response:
    results: dict[str, str] = {}
    failed = False
    for name, check in state.readiness_checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:
            log.warning("readiness check %s failed: %s", name, exc)
            results[name] = str(exc) or type(exc).__name__
            failed = True
    if failed:
        return problem_response(
            request, 503, "A dependency is not ready.", kind="not-ready", checks=results
        )
    return Readiness(status="ready", checks=results)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format 0.0.4."}},
)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
