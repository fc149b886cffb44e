"""A job's process trains on idle CPU time only, while its bookkeeping thread keeps the normal
policy (heartbeats must not wait on a busy machine). Run in a child process: priorities cannot
be raised back in the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling only")

_PROBE = """
import json, os, threading
from worker.priority import lower_for_training, restore_for_bookkeeping
lower_for_training(NICE, sched_idle=IDLE)
seen = {}
def bookkeeping():
    restore_for_bookkeeping()
    seen["thread"] = [os.sched_getscheduler(0), os.nice(0)]
def training():
    seen["trainer"] = [os.sched_getscheduler(0), os.nice(0)]
for target in (bookkeeping, training):
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
seen["main"] = [os.sched_getscheduler(0), os.nice(0)]
print(json.dumps(seen))
"""


def _probe(niceness: int, sched_idle: bool) -> dict[str, list[int]]:
    code = _PROBE.replace("NICE", str(niceness)).replace("IDLE", str(sched_idle))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    seen: dict[str, list[int]] = json.loads(done.stdout)
    return seen


def test_training_threads_run_idle_and_bookkeeping_normal() -> None:
    base = os.nice(0)
    seen = _probe(10, sched_idle=True)
    nice = max(base, 10)
    assert seen["main"] == [os.SCHED_IDLE, nice]
    assert seen["trainer"] == [os.SCHED_IDLE, nice]  # threads started later inherit it
    assert seen["thread"] == [os.SCHED_OTHER, nice]  # the niceness stays


def test_without_sched_idle_only_the_niceness_changes() -> None:
    seen = _probe(5, sched_idle=False)
    assert {policy for policy, _ in seen.values()} == {os.SCHED_OTHER}
    assert {nice for _, nice in seen.values()} == {max(os.nice(0), 5)}
