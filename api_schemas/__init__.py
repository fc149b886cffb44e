"""The contract shared by the HTTP service, the workers, the engine and the client."""

from api_schemas.results import EvalPoint, RoundResult, RunSummary, VariantResult
from api_schemas.spec import (
    ARCHITECTURES,
    DatasetSpec,
    JobSpec,
    LayerRates,
    ModelSpec,
    PruningSpec,
    TrainingSpec,
)
from api_schemas.steps import Step, StepCount, to_iterations

__all__ = [
    "ARCHITECTURES",
    "DatasetSpec",
    "EvalPoint",
    "JobSpec",
    "LayerRates",
    "ModelSpec",
    "PruningSpec",
    "RoundResult",
    "RunSummary",
    "Step",
    "StepCount",
    "TrainingSpec",
    "VariantResult",
    "to_iterations",
]
