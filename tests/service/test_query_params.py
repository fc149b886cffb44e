"""Query parameters an operation does not take are refused, each named, as body fields are."""

from __future__ import annotations

from tests.service.conftest import LiveService, ProblemCheck


def test_an_unknown_query_parameter_is_a_422_naming_it(
    live: LiveService, expect_problem: ProblemCheck
) -> None:
    with live.tenant_client() as client:
        assert client.get("/v1/jobs", params={"status": "failed", "limit": 5}).status_code == 200
        problem = expect_problem(client.get("/v1/jobs", params={"statuss": "failed"}), 422)
        assert [(e["loc"], e["type"]) for e in problem["errors"]] == [
            ("query.statuss", "unknown_parameter")
        ]
        assert "after, label, limit, status" in problem["errors"][0]["msg"]
        # an empty name counts too, and so does a parameter on an operation that takes none
        assert expect_problem(client.get("/v1/jobs?=null"), 422)["errors"][0]["loc"] == "query."
        assert expect_problem(client.get("/v1/models?x=1"), 422)["errors"][0]["msg"].endswith(
            "takes none"
        )
