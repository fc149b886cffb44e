"""Rounds of several replicates through a real ``lth serve``: GET /v1/jobs/{id}/rounds, both SDK
clients and ``lth jobs rounds``/``show`` carry every replicate and the statistics; a file
written before replicates existed still reads, as one replicate."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lth_client_support import LONG_TRAINING, Server, small_spec

from api_schemas.results import RoundResult
from client.sdk import AsyncClient
from tests.report.replicated import replicated_rounds, without_replicates

pytestmark = pytest.mark.e2e


def parse(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def ended_job(server: Server, unique_label: dict[str, str]) -> tuple[str, Path]:
    """A job cancelled before it trained anything, and its artifact folder (where the test
    plays the worker and writes rounds.json)."""
    with server.client() as client:
        job = client.create_job(small_spec(training=LONG_TRAINING, labels=unique_label))
        client.cancel_job(job.id)
        done = client.wait(job.id, poll_interval=0.1, timeout=60)
    assert done.status == "cancelled"
    folder = server.home / "artifacts" / job.id
    folder.mkdir(parents=True, exist_ok=True)
    return job.id, folder


async def async_rounds(server: Server, job_id: str) -> list[RoundResult]:
    async with AsyncClient(server.url) as client:
        return await client.rounds(job_id)


def test_replicates_pass_through(server: Server, ended_job: tuple[str, Path]) -> None:
    job_id, folder = ended_job
    written = replicated_rounds()
    (folder / "rounds.json").write_text(json.dumps([r.model_dump(mode="json") for r in written]))

    with server.client() as client:
        rounds = client.rounds(job_id)
    assert rounds == written
    assert len(rounds[2].replicates) == 3 and rounds[2].replicates[2].seed == 2_000_006
    assert rounds[2].stats["random_reinit"].accuracy_mean == pytest.approx(2.5 / 3)
    assert asyncio.run(async_rounds(server, job_id)) == written

    assert parse(server.cli("jobs", "rounds", job_id, "--json")) == [
        r.model_dump(mode="json") for r in written
    ]
    table = server.cli("jobs", "rounds", job_id)
    assert table.returncode == 0, table.stderr
    assert "mean ± std over 3 replicates" in table.stdout
    assert "90.00% ± 1.63" in table.stdout and "83.33% ± 2.49" in table.stdout
    shown = server.cli("jobs", "show", job_id)
    assert "cancelled" in shown.stdout and "92.00% ± 0.82" in shown.stdout


def test_rounds_written_before_replicates(server: Server, ended_job: tuple[str, Path]) -> None:
    job_id, folder = ended_job
    (folder / "rounds.json").write_text(json.dumps(without_replicates(replicated_rounds())))
    with server.client() as client:
        rounds = client.rounds(job_id)
    assert [(r.stats, r.replicates) for r in rounds] == [({}, [])] * 3
    assert [r.ticket.accuracy for r in rounds] == [0.90, 0.91, 0.88]
    assert parse(server.cli("jobs", "rounds", job_id, "--json"))[1]["stats"] == {}
    table = server.cli("jobs", "rounds", job_id).stdout
    assert "88.00%" in table and "±" not in table
