"""``lth worker``: how many jobs it runs at once, and what it says to a bad setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cli import worker_slots
from worker.cores import usable_cores

LTH = str(Path(sys.executable).parent / "lth")


def test_a_cpu_worker_runs_a_job_per_core_and_a_gpu_worker_one() -> None:
    assert worker_slots(0, None) == usable_cores() == len(os.sched_getaffinity(0))
    assert worker_slots(0, 1) == 1
    assert worker_slots(3, None) == worker_slots(3, 0) == 3  # an explicit count wins


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--concurrency", "-1"], {}, "'--concurrency': -1 is not in the range x>=0"),
        (["--concurrency", "two"], {}, "'--concurrency': 'two' is not a valid integer"),
        ([], {"LTH_WORKER_CONCURRENCY": "many"}, "worker_concurrency"),
        ([], {"LTH_WORKER_CONCURRENCY": "-2"}, "worker_concurrency"),
    ],
)
def test_a_bad_concurrency_is_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [LTH, "worker", *args],
        env={**os.environ, "LTH_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
