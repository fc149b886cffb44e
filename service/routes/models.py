"""/v1/models: the architectures `model.arch` accepts (besides `torchvision:<name>`)."""

from __future__ import annotations

from fastapi import APIRouter

from api_schemas.jobs import ModelInfo, ModelList
from service.deps import CurrentTenant
from service.model_catalog import catalog
from service.openapi import problems
from service.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models", name="list_models", summary="Built-in architectures", responses=problems(401)
)
def list_models(_tenant: CurrentTenant) -> ModelList:
    return ModelList(data=catalog())


@router.get(
    "/models/{name}", name="get_model", summary="One architecture", responses=problems(401, 404)
)
def get_model(name: str, _tenant: CurrentTenant) -> ModelInfo:
    for info in catalog():
        if info.name == name:
            return info
    raise ProblemError(404, f"No built-in architecture {name!r}.", kind="not-found")
