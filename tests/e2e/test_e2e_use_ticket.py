"""examples/use_the_ticket.py against a real service and a job its worker really ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.deployments import SMALL_SPEC, TERMINAL, Deployment, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_the_use_the_ticket_example_runs(embedded: Deployment, tmp_path: Path) -> None:
    with embedded.client() as client:
        response = client.post("/v1/jobs", json=SMALL_SPEC)
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], TERMINAL, timeout=300)
        assert job["status"] == "succeeded", (job, embedded.log_tail())
    example = ROOT / "examples" / "use_the_ticket.py"
    done = subprocess.run(
        [sys.executable, str(example), job["id"], "--dest", str(tmp_path / "ticket")],
        env={**os.environ, "LTH_URL": embedded.url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    ratio = next(line for line in lines if line.startswith("trained.sparse.safetensors"))
    assert float(ratio.split(":")[1].split("%")[0]) < 100
    difference = next(line for line in lines if line.startswith("ONNX max abs difference"))
    assert float(difference.rsplit(" ", 1)[1]) <= 1e-4
    assert "pruned weights still zero after fine-tuning: True" in lines
