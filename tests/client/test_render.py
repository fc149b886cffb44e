"""What the CLI prints about results: the rounds table, the one-line outcome and the job
detail, over three replicates (mean ± std) and over one (plain numbers, as before replicates)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console, RenderableType

from api_schemas.jobs import Job, JobResult
from api_schemas.results import RoundResult
from api_schemas.spec import JobSpec
from client.commands.render import job_detail, jobs_table, outcome, rounds_table
from tests.report.replicated import SPEC, replicated_rounds, summary, without_replicates


def text(renderable: RenderableType) -> str:
    console = Console(file=io.StringIO(), width=160, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def rows(table_text: str) -> dict[str, list[str]]:
    """The table's body rows by their round cell ("1 *" for the ticket's), cells split."""
    found = {}
    for line in table_text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 1 and cells[0][:1].isdigit():
            found[cells[0]] = cells[1:]
    return found


def old_rounds() -> list[RoundResult]:
    """The rounds of replicate 0 as a file written before replicates existed."""
    return [RoundResult.model_validate(r) for r in without_replicates(replicated_rounds())]


def job(result: JobResult, replicates: int) -> Job:
    return Job(
        id="job_" + "0" * 26,
        status="succeeded",
        spec=JobSpec.model_validate(SPEC | {"replicates": replicates}),
        spec_hash="0" * 64,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        attempt=1,
        result=result,
        cancel_requested=False,
        urls={},
    )


def test_rounds_table_over_replicates_shows_mean_and_std() -> None:
    shown = text(rounds_table(replicated_rounds(), ticket_round=1))
    assert "Rounds (accuracy at the early-stopping step; mean ± std over 3 replicates)" in shown
    assert rows(shown) == {
        "0": ["100.00%", "10,000", "91.00% ± 0.82", "-", "-"],
        "1 *": ["80.00%", "8,000", "92.00% ± 0.82", "87.00% ± 0.82", "89.00% ± 0.82"],
        "2": ["64.00%", "6,400", "90.00% ± 1.63", "82.00% ± 0.82", "83.33% ± 2.49"],
    }
    header = next(line for line in shown.splitlines() if "density" in line)
    columns = [c.strip() for c in header.split("┃")]
    assert columns == ["round", "density", "weights", "ticket", "random_prune", "random_reinit"]


def test_rounds_table_of_one_replicate_shows_plain_accuracies() -> None:
    shown = text(rounds_table(old_rounds(), ticket_round=1))
    assert "±" not in shown and "replicates" not in shown
    assert "Rounds (accuracy at the early-stopping step)" in shown
    assert rows(shown) == {
        "0": ["100.00%", "10,000", "90.00%", "-", "-"],
        "1 *": ["80.00%", "8,000", "91.00%", "87.00%", "89.00%"],
        "2": ["64.00%", "6,400", "88.00%", "82.00%", "84.00%"],
    }


def test_outcome_and_detail_over_replicates() -> None:
    done = job(JobResult.from_summary(summary()), replicates=3)
    assert outcome(done) == (
        f"Job {done.id} succeeded: the ticket (round 1) keeps 80.00% of the weights at "
        "92.00% ± 0.82 accuracy over 3 replicates (dense 91.00% ± 0.82; stopped: rounds)."
    )
    detail = text(job_detail(done, replicated_rounds()))
    assert "replicates 3\n" in detail and "92.00% ± 0.82" in detail
    assert "ticket 80.0% @ 92.0% ± 0.8" in text(jobs_table([done]))


def test_outcome_of_one_replicate() -> None:
    result = JobResult(
        ticket_round=1,
        ticket_density=0.8,
        ticket_accuracy=0.91,
        dense_accuracy=0.90,
        rounds_completed=2,
        stop_reason="rounds",
    )
    done = job(result, replicates=1)
    assert outcome(done) == (
        f"Job {done.id} succeeded: the ticket (round 1) keeps 80.00% of the weights at "
        "91.00% accuracy (dense 90.00%; stopped: rounds)."
    )
    detail = text(job_detail(done, old_rounds()))
    assert "replicates" not in detail and "±" not in detail
    assert "ticket 80.0% @ 91.0%" in text(jobs_table([done]))
