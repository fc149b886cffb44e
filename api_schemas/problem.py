"""RFC 9457 problem details: the one error body every endpoint answers with."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    """One invalid input, located by a dotted path so a client can point at the exact field."""

    model_config = ConfigDict(extra="forbid")

    loc: str = Field(
        description="Dotted path of the offending field inside the request body "
        "(`pruning.rewind_to`, `training.milestones[0]`); non-body inputs are prefixed with "
        "where they came from (`query.limit`, `header.idempotency-key`).",
        examples=["pruning.rewind_to"],
    )
    msg: str = Field(description="What is wrong and what is allowed instead.")
    type: str = Field(description="Machine-readable error kind, e.g. `value_error`.")


class Problem(BaseModel):
    """An error response (`application/problem+json`, RFC 9457).

    Extension members (such as `errors`, or `checks` on /readyz) may be present; clients must
    ignore the ones they do not know.
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:lth:problem:validation",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "The request has 1 invalid field.",
                    "instance": "/v1/jobs",
                    "errors": [
                        {
                            "loc": "pruning.rewind_to",
                            "msg": "pruning.rewind_to (500it) must come before the end of "
                            "training (training.steps = 300it)",
                            "type": "value_error",
                        }
                    ],
                }
            ]
        },
    )

    type: str = Field(
        default="about:blank",
        description="URI naming the kind of problem; `about:blank` when the status says it all.",
    )
    title: str = Field(description="Short summary of the kind of problem; same for every instance.")
    status: int = Field(ge=400, le=599, description="The HTTP status code of this response.")
    detail: str | None = Field(
        default=None, description="Explanation specific to this occurrence, for humans."
    )
    instance: str | None = Field(
        default=None, description="The request path this problem occurred on."
    )
    errors: list[FieldError] | None = Field(
        default=None, description="Validation problems only: every invalid field."
    )
