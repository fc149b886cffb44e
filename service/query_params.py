"""Unknown query parameters are refused (422, naming each), as unknown body fields are: a
mistyped ``?statuss=failed`` must not quietly list every job."""

from __future__ import annotations

from fastapi import Request
from fastapi.routing import APIRoute

from api_schemas.problem import FieldError
from service.problems import validation_problem


def _declared(route: APIRoute) -> frozenset[str]:
    """The query parameters a route takes, its dependencies' included."""
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


async def refuse_unknown_query(request: Request) -> None:
    """An app-wide dependency: every query parameter must be one the operation declares.
    ``async``: it does no I/O, so it runs on the event loop rather than costing every request
    a trip through the thread pool."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _declared(route)  # a handful of nodes: no cache needed
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        raise validation_problem(
            [
                FieldError(
                    loc=f"query.{name}",
                    msg=f"unknown query parameter {name!r}; this operation takes "
                    f"{', '.join(sorted(declared)) or 'none'}",
                    type="unknown_parameter",
                )
                for name in unknown
            ]
        )
