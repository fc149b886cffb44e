"""The load benchmark in a reduced form: many pollers while two jobs train, then a burst of
submissions; no errors, every submission listed exactly once. (The full run and its latency
figures: ``python -m bench.load``, ``bench/results/load.json``.)"""

from __future__ import annotations

import pytest

from bench import load
from tests.conftest import redis_db

pytestmark = pytest.mark.e2e


def test_pollers_and_a_burst_lose_nothing(
    postgres_server_url: str, redis_url: str, fashion_mnist_dir: object
) -> None:
    broker = redis_db(redis_url, 2)
    argv = ["--clients", "40", "--seconds", "5", "--burst", "150", "--no-write"]
    result = load.main([*argv, "--database-url", postgres_server_url, "--broker-url", broker])
    assert result["polling"]["errors"] == {} and result["polling"]["requests"] > 40
    burst = result["burst"]
    assert burst["errors"] == {}
    assert burst["accepted"] == burst["listed_once"] == 150
    assert burst["duplicates"] == 0
    assert set(burst["statuses"]) <= {"queued", "running", "succeeded"}
