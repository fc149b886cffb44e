"""Bring your own model: a CNN defined here, exported to ONNX, uploaded over HTTP and pruned by
a real worker; and trained weights for a built-in architecture pruned the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from api_schemas.spec import ModelSpec
from tests.e2e.deployments import TERMINAL, Deployment, wait_for
from tests.engine.test_uploaded_models import UserNet, export_onnx
from worker.engine.models import build_model

pytestmark = pytest.mark.e2e

DATA = "synthetic://?classes=4&shape=3,8,8&train=200&test=40"
TRAINING = {"batch_size": 10, "steps": "20it", "eval_every": "20it", "lr": 0.01}


def test_an_uploaded_cnn_and_uploaded_weights_are_pruned(
    embedded: Deployment, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    onnx_file = export_onnx(UserNet(), tmp_path / "net.onnx")
    weights = build_model(ModelSpec(arch="mlp", hidden_sizes=[16]), (3, 8, 8), 4).state_dict()
    with embedded.client() as client:
        uploaded = client.post("/v1/models", files={"file": ("net.onnx", onnx_file.read_bytes())})
        assert uploaded.status_code == 201, uploaded.text
        trained = client.post("/v1/models", files={"file": ("mlp.safetensors", save(weights))})
        assert trained.status_code == 201, trained.text
        specs = [
            {"uri": uploaded.json()["uri"]},
            {"arch": "mlp", "hidden_sizes": [16], "weights": trained.json()["uri"]},
        ]
        jobs = []
        for model in specs:
            spec = {
                "model": model,
                "dataset": {"uri": DATA, "validation_size": 0},
                "training": TRAINING,
                "pruning": {"rounds": 2},
            }
            response = client.post("/v1/jobs", json=spec)
            assert response.status_code == 202, response.text
            jobs.append(response.json()["id"])
        for job_id, model in zip(jobs, specs, strict=True):
            job = wait_for(client, job_id, TERMINAL, timeout=300)
            assert job["status"] == "succeeded", (job, embedded.log_tail())
            assert job["result"]["rounds_completed"] == 2
            rounds = client.get(f"/v1/jobs/{job_id}/rounds").json()
            densities = [r["density"] for r in rounds]
            assert len(densities) == 3 and densities[0] == 1.0 > densities[1] > densities[2]
            # The run records the upload by its id, not by where a worker cached it.
            stored = client.get(f"/v1/jobs/{job_id}/artifacts/spec.json").json()["model"]
            assert {k: stored.get(k) for k in model} == model
        own = jobs[0]
        _check_ticket_and_onnx_come_back(embedded, own, tmp_path / "downloads")


def _check_ticket_and_onnx_come_back(embedded: Deployment, job_id: str, dest: Path) -> None:
    """The user's own module takes the ticket back by its layers' names, and the trained model
    comes back as ONNX that onnxruntime runs like PyTorch."""
    import numpy as np
    import onnxruntime
    from safetensors.torch import load_file

    from client.sdk import Client

    with Client(embedded.url) as lth:
        names = {a.name for a in lth.list_artifacts(job_id)}
        assert {"model.onnx", "ticket.sparse.safetensors", "trained.sparse.safetensors"} <= names
        ticket = lth.load_ticket(job_id, dest, into=UserNet())
        trained = lth.load_trained(job_id, dest, into=UserNet()).eval()
        lth.download_all(job_id, dest, names=["ticket.safetensors", "model.onnx"])
    for key, value in load_file(dest / "ticket.safetensors").items():
        assert torch.equal(ticket.state_dict()[key], value), key
    masks = [m for m in trained.state_dict().values() if m.dim() > 1]
    assert min(float((m == 0).float().mean()) for m in masks) > 0  # pruned weights are zero
    inputs = torch.randn(5, 3, 8, 8)
    session = onnxruntime.InferenceSession(str(dest / "model.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    with torch.no_grad():
        expected = trained(inputs).numpy()
    assert np.abs(logits - expected).max() <= 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_torchvision_models_uploaded_as_onnx_are_pruned_and_come_back(
    embedded: Deployment, tmp_path: Path
) -> None:
    """resnet18 and mobilenet_v3_small as a user would send them: exported to ONNX, uploaded,
    pruned for two short rounds by the worker, and their tickets loaded back into torchvision's
    own modules by the layers' names."""
    import torchvision
    from safetensors.torch import load_file

    from client.sdk import Client

    data = "synthetic://?classes=4&shape=3,32,32&train=64&test=16"
    training = {"batch_size": 8, "steps": "3it", "eval_every": "3it", "lr": 0.01}
    names = ("resnet18", "mobilenet_v3_small")
    jobs: dict[str, str] = {}
    with embedded.client() as client:
        for name in names:
            torch.manual_seed(0)
            original = getattr(torchvision.models, name)(num_classes=4)
            onnx_file = export_onnx(original, tmp_path / f"{name}.onnx", (3, 32, 32))
            files = {"file": (f"{name}.onnx", onnx_file.read_bytes())}
            uploaded = client.post("/v1/models", files=files)
            assert uploaded.status_code == 201, uploaded.text
            spec = {
                "model": {"uri": uploaded.json()["uri"]},
                "dataset": {"uri": data, "validation_size": 0},
                "training": training,
                "pruning": {"rounds": 2, "rates": {"conv": 0.2, "linear": 0.2}},
            }
            response = client.post("/v1/jobs", json=spec)
            assert response.status_code == 202, response.text
            jobs[name] = response.json()["id"]
        for name, job_id in jobs.items():
            job = wait_for(client, job_id, TERMINAL, timeout=600)
            assert job["status"] == "succeeded", (name, job, embedded.log_tail())
            densities = [r["density"] for r in client.get(f"/v1/jobs/{job_id}/rounds").json()]
            assert densities[0] == 1.0 > densities[1] > densities[2], name
    with Client(embedded.url) as lth:
        for name, job_id in jobs.items():
            dest = tmp_path / f"{name}-ticket"
            module = getattr(torchvision.models, name)(num_classes=4)
            ticket = lth.load_ticket(job_id, dest, into=module)
            lth.download_all(job_id, dest, names=["ticket.safetensors"])
            for key, value in load_file(dest / "ticket.safetensors").items():
                assert torch.equal(ticket.state_dict()[key], value), (name, key)
