"""Memory bombs in a spec, over real HTTP: refused at submission, before anything allocates.

A built-in model's parameters are counted from the spec and the dataset's known shape, against
``LTH_MAX_PARAMETERS``; synthetic datasets have caps of their own.
"""

from __future__ import annotations

import io
import resource
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

ProblemCheck = Callable[..., dict[str, Any]]
Spec = dict[str, Any]
MNIST_LIKE = "synthetic://?classes=10&shape=1,28,28&train=200&test=50"
MiB = 1024
#: mlp 784-1e6-10: 784e6 + 1e6 weights and biases, then 1e7 + 10.
MLP_BOMB = "795,000,010 parameters for inputs of shape (1, 28, 28) and 10 classes"


def _spec(model: dict[str, Any], uri: str = MNIST_LIKE) -> Spec:
    return {
        "model": model,
        "dataset": {"uri": uri, "validation_size": 20},
        "training": {"batch_size": 10, "steps": "30it", "eval_every": "10it"},
        "pruning": {"rounds": 1},
    }


def _refused(client: httpx.Client, spec: Spec, check: ProblemCheck) -> dict[str, Any]:
    body = check(client.post("/v1/jobs", json=spec), 422)
    assert body["type"] == "urn:lth:problem:validation"
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MiB  # KiB on Linux


def _upload(client: httpx.Client) -> str:
    """A tiny uploaded dataset: examples of shape (1, 4, 4), 2 classes."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((40, 1, 4, 4), dtype=np.float32),
        y_train=np.arange(40, dtype=np.int64) % 2,
        x_test=rng.random((4, 1, 4, 4), dtype=np.float32),
        y_test=np.arange(4, dtype=np.int64) % 2,
    )
    response = client.post("/v1/datasets", files={"file": ("tiny.npz", buffer.getvalue())})
    assert response.status_code == 201, response.text
    uri: str = response.json()["uri"]
    return uri


def test_oversized_models_are_refused_before_any_worker_builds_them(
    live: Any, expect_problem: ProblemCheck
) -> None:
    cap = live.settings.max_parameters
    before = _peak_rss_mib()
    enqueued = len(live.enqueued)
    with live.tenant_client() as client:
        upload = _upload(client)
        bombs = [
            # 784 x 1e6 weights: 3 GB of float32 before the worker's count would have run.
            (_spec({"arch": "mlp", "hidden_sizes": [1_000_000]}), MLP_BOMB),
            (_spec({"arch": "mlp", "hidden_sizes": [1_000_000]}, "torchvision://MNIST"), MLP_BOMB),
            (_spec({"arch": "resnet20", "width": 4096}, "torchvision://CIFAR10"), "(3, 32, 32)"),
            (
                _spec(
                    {"arch": "conv2"},
                    "synthetic://?classes=2&shape=3,1024,1024&train=20&test=10",
                ),
                "(3, 1024, 1024)",
            ),
            (_spec({"arch": "mlp", "hidden_sizes": [200_000, 1000]}, upload), "(1, 4, 4)"),
            # The dataset's shape is unknown here: even the smallest input is too many.
            (
                _spec(
                    {"arch": "mlp", "hidden_sizes": [20_000, 20_000]},
                    f"npz://{live.settings.home / 'data' / 'set.npz'}",
                ),
                "at least",
            ),
        ]
        for spec, says in bombs:
            error = _refused(client, spec, expect_problem)
            assert (error["loc"], error["type"]) == ("model", "too_large"), error
            assert f"at most {cap:,}" in error["msg"], error
            assert says in error["msg"], error
        assert client.get("/v1/jobs").json()["data"] == []
        assert len(live.enqueued) == enqueued
        # Sizes just inside the cap are accepted.
        fits = {"arch": "mlp", "hidden_sizes": [cap // 800]}
        assert client.post("/v1/jobs", json=_spec(fits)).status_code == 202
    assert _peak_rss_mib() - before < 200


def test_the_cap_is_the_services_setting(
    service_factory: Any, expect_problem: ProblemCheck
) -> None:
    small = service_factory(max_parameters=100_000)
    with small.tenant_client() as client:
        error = _refused(client, _spec({"arch": "lenet_300_100"}), expect_problem)
        assert error["loc"] == "model"
        assert "266,610 parameters for inputs of shape (1, 28, 28) and 10 classes" in error["msg"]
        assert "at most 100,000" in error["msg"]
        fits = _spec({"arch": "mlp", "hidden_sizes": [100]})
        assert client.post("/v1/jobs", json=fits).status_code == 202


def test_synthetic_datasets_have_caps(live: Any, expect_problem: ProblemCheck) -> None:
    before = _peak_rss_mib()
    bombs = {
        "synthetic://?classes=500000000&shape=1,1,1&train=10&test=10": "classes=500000000",
        "synthetic://?classes=10&shape=1&train=100000000&test=10": "train=100000000",
        "synthetic://?classes=10&shape=1&train=10&test=100000000": "test=100000000",
        "synthetic://?classes=10&shape=3,4096,4096&train=20&test=10": "shape=3,4096,4096",
        "synthetic://?classes=90000&shape=1,64,64&train=10&test=10": "classes=90000",
    }
    with live.tenant_client() as client:
        for uri, says in bombs.items():
            error = _refused(client, _spec({"arch": "lenet_300_100"}, uri), expect_problem)
            assert error["loc"] == "dataset.uri" and says in error["msg"], error
        assert client.get("/v1/jobs").json()["data"] == []
    assert _peak_rss_mib() - before < 200
