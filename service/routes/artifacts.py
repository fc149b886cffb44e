"""/v1/jobs/{id}/artifacts: list a job's files and download them (ETag = sha256, Range).

Everything is read from the artifact store. With ``LTH_ARTIFACT_REDIRECT=presigned`` a GET is
answered with a 307 to a short-lived presigned URL of the object store, so the bytes never pass
through the API; HEAD (size, ETag) and the 304 are still answered here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.responses import RedirectResponse, Response

from api_schemas.jobs import Artifact, ArtifactList
from service.artifact_files import ArtifactFile, find_artifact, list_artifacts
from service.deps import CurrentTenant, SessionDep, StateDep, owned_job
from service.object_response import object_response, unsatisfiable
from service.openapi import problems
from service.problems import not_found, problem_response

router = APIRouter(prefix="/v1", tags=["artifacts"])


def _etag(artifact: ArtifactFile) -> str:
    return f'"{artifact.sha256}"'


def _matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison, as RFC 9110 prescribes for If-None-Match."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _view(request: Request, job_id: str, artifact: ArtifactFile) -> Artifact:
    url = request.url_for("download_artifact", job_id=job_id, name=artifact.name)
    return Artifact(
        name=artifact.name,
        size=artifact.size,
        sha256=artifact.sha256,
        media_type=artifact.media_type,
        url=str(url),
    )


@router.get(
    "/jobs/{job_id}/artifacts",
    name="list_artifacts",
    summary="List a job's artifacts",
    responses=problems(401, 404),
)
def list_job_artifacts(
    request: Request, job_id: str, tenant: CurrentTenant, state: StateDep, session: SessionDep
) -> ArtifactList:
    job = owned_job(session, tenant, job_id)
    session.close()
    files = list_artifacts(state.artifacts, job.id)
    return ArtifactList(data=[_view(request, job.id, artifact) for artifact in files])


@router.head("/jobs/{job_id}/artifacts/{name:path}", name="head_artifact", include_in_schema=False)
@router.get(
    "/jobs/{job_id}/artifacts/{name:path}",
    name="download_artifact",
    summary="Download an artifact",
    description="Strong `ETag` (the quoted sha256) with `If-None-Match` → 304, and byte "
    "`Range` requests → 206 (416 when unsatisfiable). A service that hands downloads to its "
    "object store answers 307 with a presigned `Location` instead (follow it, keeping `Range`).",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file."},
        206: {"description": "The requested byte range."},
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        307: {
            "description": "With `LTH_ARTIFACT_REDIRECT=presigned`: fetch the bytes from the "
            "short-lived presigned URL of the object store in `Location`."
        },
        **problems(401, 404, 416),
    },
)
def download_artifact(
    request: Request,
    job_id: str,
    name: str,
    tenant: CurrentTenant,
    state: StateDep,
    session: SessionDep,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
    range_: Annotated[str | None, Header(alias="range", include_in_schema=False)] = None,
) -> Response:
    job = owned_job(session, tenant, job_id)
    session.close()
    artifact = find_artifact(state.artifacts, job.id, name)
    if artifact is None:
        raise not_found("artifact")
    etag = _etag(artifact)
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    if request.method == "GET" and state.settings.artifact_redirect == "presigned":
        location = state.artifacts.presigned_url(
            artifact.key,
            expires_s=state.settings.artifact_presign_seconds,
            filename=artifact.name.rsplit("/", 1)[-1],
        )
        if location is not None:
            return RedirectResponse(
                location, status_code=307, headers={"ETag": etag, "Cache-Control": "no-store"}
            )
    if range_ is not None and unsatisfiable(range_, artifact.size):
        return problem_response(
            request,
            416,
            f"The artifact has {artifact.size} bytes; the requested range lies outside it.",
            kind="range-not-satisfiable",
            headers={"Content-Range": f"bytes */{artifact.size}", "ETag": etag},
        )
    try:
        return object_response(
            state.artifacts,
            artifact,
            method=request.method,
            request_headers=request.headers,
            headers={"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"},
        )
    except FileNotFoundError:  # removed since it was found (the job was just deleted)
        raise not_found("artifact") from None
