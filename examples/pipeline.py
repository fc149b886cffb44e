"""Lottery-ticket pruning as a pipeline step, with the Python SDK.

    export LTH_URL=http://lth.internal:8000 LTH_API_KEY=lth_...
    python examples/pipeline.py examples/lenet_fashion_mnist.yaml --max-drop 1.0 --dest ticket

Submits the spec, prints progress while waiting, fails the step when the winning ticket lost more
than ``--max-drop`` accuracy points against the dense network, else downloads every artifact.
Exit status as the ``lth`` command (``client/exit_codes.py``): 0 ok, 1 job failed, 3 cancelled;
10 (this script's own) when the ticket's accuracy drop is too large.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from api_schemas.jobs import Job
from api_schemas.specfile import parse_spec_text
from client.exit_codes import JOB_STATUS_EXIT, ExitCode
from client.sdk import Client

TOO_MUCH_DROP = 10  # this script's own: the job succeeded but the ticket is not good enough


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec from a JSON or YAML file."""
    text = path.read_text()
    spec: dict[str, Any] = parse_spec_text(text, json_only=path.suffix == ".json")
    return spec


def show_progress(job: Job) -> None:
    """One line per change the SDK reports: status, round, step and latest accuracy."""
    p = job.progress
    where = f" round {p.round}/{p.rounds_total - 1} step {p.step}/{p.steps_total}" if p else ""
    accuracy = p.metrics.get("test_accuracy") if p else None
    extra = f" test accuracy {100 * accuracy:.2f}%" if accuracy is not None else ""
    print(f"{job.id} {job.status}{where}{extra}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy points (default 1)")
    parser.add_argument("--dest", type=Path, default=Path("ticket"))
    args = parser.parse_args()

    with Client() as client:  # LTH_URL and LTH_API_KEY from the environment
        job = client.create_job(load_spec(args.spec))
        job = client.wait(job.id, on_progress=show_progress)
        if job.status != "succeeded" or job.result is None:
            reason = f": {job.error.message}" if job.error else ""
            print(f"{job.id} {job.status}{reason}", file=sys.stderr)
            return int(JOB_STATUS_EXIT.get(job.status, ExitCode.JOB_FAILED))

        result = job.result
        drop = 100 * (result.dense_accuracy - result.ticket_accuracy)
        print(
            f"{job.id}: ticket keeps {100 * result.ticket_density:.2f}% of the weights at "
            f"{100 * result.ticket_accuracy:.2f}% accuracy ({drop:+.2f} points below dense)"
        )
        if drop > args.max_drop:
            print(f"accuracy drop exceeds the allowed {args.max_drop:.2f} points", file=sys.stderr)
            return TOO_MUCH_DROP

        files = client.download_all(job.id, args.dest)
        print(f"{len(files)} artifacts in {args.dest}")
        print(f"report: {client.config.url}/v1/jobs/{job.id}/report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
