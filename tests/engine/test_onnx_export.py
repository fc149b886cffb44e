"""model.onnx on real files: every built-in architecture, pruned, run by onnxruntime against
PyTorch; the run writes and lists it; a model the exporter rejects leaves a succeeded run that
says why."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from api_schemas.spec import JobSpec, ModelSpec
from service.artifact_files import list_artifacts
from store.artifact_store import LocalArtifactStore
from worker.engine.artifacts import verify
from worker.engine.data import DataConfig
from worker.engine.data.idx import read_idx
from worker.engine.hooks import Progress
from worker.engine.imp import IMPRun, run
from worker.engine.masks import apply_mask, dense_mask, density
from worker.engine.models import build_model
from worker.engine.onnx_export import INPUT, OPSET, OUTPUT, export_model
from worker.engine.paths import RunPaths
from worker.engine.pruning import prune_global
from worker.engine.tensorio import load_tensors, read_json, sha256_file

FASHION = (1, 28, 28)
CIFAR = (3, 32, 32)
ARCHITECTURES: list[tuple[str, tuple[int, ...], dict[str, Any]]] = [
    ("lenet_300_100", FASHION, {}),
    ("mlp", FASHION, {"hidden_sizes": [128, 64]}),
    ("conv2", CIFAR, {}),
    ("conv4", CIFAR, {}),
    ("conv6", CIFAR, {}),
    ("vgg11", CIFAR, {}),
    ("resnet20", CIFAR, {}),
]
DATA = "synthetic://?classes=4&shape=1,6,6&train=400&test=200&noise=1.5"
CONFIG = DataConfig(roots=(Path("/nonexistent"),))


def sparse_model(arch: str, shape: tuple[int, ...], extra: dict[str, Any]) -> nn.Module:
    """The architecture with real batch-norm statistics and a global magnitude mask at 20%
    density applied, in eval mode."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, **extra), shape, 10)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # batch norm's running statistics move away from (0, 1)
            model(torch.randn(16, *shape) * 1.5 + 0.3)
    mask = prune_global(model.state_dict(), dense_mask(model), 0.8)
    assert density(mask) == pytest.approx(0.2, abs=1e-3)
    model.load_state_dict(apply_mask(model.state_dict(), mask))
    return model.eval()


def fashion_images(directory: Path, count: int) -> Tensor:
    """The first ``count`` real test images, standardised as the engine feeds them."""
    images = read_idx(directory / "t10k-images-idx3-ubyte.gz")[:count]
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255).unsqueeze(1)
    return (x - 0.2860) / 0.3530


def inputs_for(shape: tuple[int, ...], request: pytest.FixtureRequest) -> Tensor:
    if shape == FASHION:
        directory: Path = request.getfixturevalue("fashion_mnist_dir")
        return fashion_images(directory, 64)
    return torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))


def onnx_logits(path: Path, x: Tensor) -> Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT], {INPUT: x.numpy()})
    return torch.from_numpy(np.asarray(out))


def initializers(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


@pytest.mark.parametrize(
    ("arch", "shape", "extra"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES]
)
def test_every_architecture_matches_pytorch_in_onnxruntime(
    arch: str,
    shape: tuple[int, ...],
    extra: dict[str, Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    model = sparse_model(arch, shape, extra)
    path = tmp_path / "model.onnx"
    result = export_model(model, None, shape, path)
    assert result.status == "exported", result.reason
    assert result.info()["opset"] == OPSET

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT]
    assert [o.name for o in proto.graph.output] == [OUTPUT]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}

    x = inputs_for(shape, request)
    with torch.no_grad():
        expected = model(x)
    got = onnx_logits(path, x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # The batch dimension is free: one example and an odd count both run.
    assert onnx_logits(path, x[:1]).shape == (1, 10)
    assert torch.allclose(onnx_logits(path, x[:5]), expected[:5], atol=1e-4)


@pytest.mark.parametrize(
    ("arch", "batch_norm_folded"), [("lenet_300_100", False), ("conv2", False), ("resnet20", True)]
)
def test_pruned_weights_are_zero_in_the_onnx_initializers(
    arch: str, batch_norm_folded: bool, tmp_path: Path
) -> None:
    shape, extra = next((s, e) for a, s, e in ARCHITECTURES if a == arch)
    model = sparse_model(arch, shape, extra)
    state = model.state_dict()
    path = tmp_path / "model.onnx"
    assert export_model(model, None, shape, path).status == "exported"
    stored = initializers(path)
    kept = total = 0
    for key in dense_mask(model):
        weight = state[key].numpy()
        assert key in stored, f"{key} is not an initializer: {sorted(stored)}"
        if batch_norm_folded:  # scaled per output channel by the batch norm after it
            assert stored[key].shape == weight.shape
            assert np.array_equal(stored[key] == 0, weight == 0), key
        else:
            assert np.array_equal(stored[key], weight), key
        kept, total = kept + np.count_nonzero(stored[key]), total + weight.size
    assert kept / total == pytest.approx(0.2, abs=1e-3)  # the 80% pruned are stored as zeros


def test_export_loads_the_given_state_and_leaves_model_and_rng_alone(tmp_path: Path) -> None:
    model = sparse_model("lenet_300_100", FASHION, {})
    other = build_model(ModelSpec(arch="lenet_300_100"), FASHION, 10).state_dict()
    before = copy.deepcopy(model.state_dict())
    model.train()
    rng = torch.get_rng_state()
    path = tmp_path / "model.onnx"
    assert export_model(model, other, FASHION, path, metadata={"arch": "lenet"}).status == (
        "exported"
    )
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert np.array_equal(initializers(path)["fc1.weight"], other["fc1.weight"].numpy())
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["arch"] == "lenet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left


# ---- models the exporter rejects ------------------------------------------------------------


class BranchOnValues(nn.Module):
    """The test MLP's layers, with Python control flow on a tensor's value: torch.export cannot
    trace which branch to take."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(36, 24), nn.Linear(24, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        if h.mean() > 10:  # never true in practice, but decided by the data
            h = h / 2
        out: Tensor = self.fc3(torch.relu(self.fc2(h)))
        return out


class RunningMax(nn.Module):
    """A cumulative maximum, which has no ONNX mapping in torch's exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(36, 24), nn.Linear(24, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cummax(self.fc1(x.flatten(1)), dim=1).values
        out: Tensor = self.fc2(h)
        return out


class BatchAsNumber(nn.Module):
    """Reads the batch size as a Python number: the exporter's fallback fixes it at the traced
    size, and a graph that serves one batch size only is no export."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(36, 24), nn.Linear(24, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x.reshape(int(x.shape[0]), 36))
        out: Tensor = self.fc2(torch.relu(h))
        return out


@pytest.mark.parametrize(
    ("model", "cause"),
    [(BranchOnValues(), "data-dependent"), (RunningMax(), "cummax"), (BatchAsNumber(), "batch")],
    ids=["data-dependent-branch", "unmapped-op", "fixed-batch"],
)
def test_a_model_the_exporter_rejects_is_skipped_with_its_reason(
    model: nn.Module, cause: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier attempt's file")
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 6, 6)).shape == (2, 4)  # eager PyTorch runs it
    result = export_model(model, None, (1, 6, 6), path)
    assert result.status == "skipped"
    assert result.reason is not None and cause in result.reason
    assert "\x1b[" not in result.reason and "\n" not in result.reason
    info = result.info()
    assert info["format"] == "onnx" and info["status"] == "skipped"
    assert "file" not in info
    assert list(tmp_path.iterdir()) == []  # neither a half-written file nor a stale one


# ---- through the engine -----------------------------------------------------------------------


def make_spec() -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden_sizes": [24, 16]},
            "dataset": {"uri": DATA, "validation_size": 80},
            "training": {"batch_size": 20, "steps": "40it", "eval_every": "20it", "lr": 0.005},
            "pruning": {"rounds": 2, "rates": {"linear": 0.5}},
            "seed": 3,
        }
    )


def test_a_run_writes_lists_and_serves_model_onnx(tmp_path: Path) -> None:
    events: list[Progress] = []
    spec = make_spec()
    summary = run(spec, tmp_path, CONFIG, on_progress=events.append)
    paths = RunPaths(tmp_path)

    (export,) = [e for e in events if e.event == "export"]
    assert export.info["status"] == "exported" and export.info["file"] == "model.onnx"
    assert export.round == summary.ticket_round

    manifest = read_json(paths.manifest)
    entry = next(a for a in manifest["artifacts"] if a["name"] == "model.onnx")
    assert entry["sha256"] == sha256_file(paths.onnx)
    assert entry["size"] == paths.onnx.stat().st_size
    assert verify(tmp_path) == []
    store = LocalArtifactStore(tmp_path.parent)
    listed = {a.name: a for a in list_artifacts(store, tmp_path.name)}
    assert listed["model.onnx"].media_type == "application/octet-stream"
    assert listed["model.onnx"].sha256 == entry["sha256"]
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind

    # The file is the winning round's trained sparse model: same weights, same logits.
    trained = load_tensors(paths.final_trained)
    stored = initializers(paths.onnx)
    mask = load_tensors(paths.final_mask)
    for key, m in mask.items():
        assert np.array_equal(stored[key], trained[key].numpy()), key
        assert not stored[key][~m.numpy()].any()
    model = build_model(spec.model, (1, 6, 6), 4)
    model.load_state_dict(trained)
    x = torch.randn(50, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.eval()(x)
    got = onnx_logits(paths.onnx, x)
    assert float((got - expected).abs().max()) <= 1e-5
    assert torch.equal(got.argmax(1), expected.argmax(1))
    props = {p.key: p.value for p in onnx.load(str(paths.onnx)).metadata_props}
    assert props["arch"] == "mlp"


def test_a_run_whose_model_cannot_export_succeeds_and_says_why(tmp_path: Path) -> None:
    events: list[Progress] = []
    job = IMPRun(make_spec(), tmp_path, CONFIG, on_progress=events.append, batched=False)
    # The run's model is a user-kind module with the registry model's layers whose forward
    # branches on tensor values: it trains like any other, but cannot be traced for ONNX.
    own = BranchOnValues()
    own.load_state_dict(job.model.state_dict())
    job.model = own
    summary = job.run()
    paths = RunPaths(tmp_path)

    assert summary.rounds_completed == 2
    (export,) = [e for e in events if e.event == "export"]
    assert export.info["format"] == "onnx" and export.info["status"] == "skipped"
    assert "data-dependent" in str(export.info["reason"])
    assert not paths.onnx.exists()
    assert not [p for p in tmp_path.rglob("*.onnx*")]
    names = {a["name"] for a in read_json(paths.manifest)["artifacts"]}
    assert "trained.safetensors" in names and "model.onnx" not in names
    assert verify(tmp_path) == []


# ---- through the job runner -----------------------------------------------------------------


def test_the_job_runner_records_the_export_as_an_event(tmp_path: Path) -> None:
    from store import events as store_events
    from store.db import make_engine, make_sessionmaker, migrate
    from store.jobs import claim_job, create_job, load_job
    from store.settings import Settings
    from store.tenants import ensure_tenant
    from worker.job_runner import JobRunner, _Shared

    settings = Settings(home=tmp_path / "home", torch_threads=1)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            tenant = ensure_tenant(session, "acme")
            job_id = create_job(session, tenant.id, make_spec()).job.id
        runner = JobRunner(settings, sessions, "test-worker")
        assert runner.run(job_id) == "succeeded"
        assert (settings.artifact_root / job_id / "model.onnx").exists()

        # A skipped export, as the engine reports one, becomes a warning with the reason (the
        # attempt that runs a job records it; events are fenced by the attempt).
        with sessions.begin() as session:
            skipping = create_job(session, tenant.id, make_spec()).job.id
            claimed = claim_job(session, skipping, "test-worker").job
            assert claimed is not None
        rejected = export_model(BranchOnValues(), None, (1, 6, 6), tmp_path / "x.onnx")
        progress = Progress(0, 2, "ticket", 40, 40, 1.0, event="export", info=rejected.info())
        runner._on_progress(skipping, progress, _Shared(attempt=claimed.attempt))
        with sessions() as session:
            job = load_job(session, job_id)
            assert job is not None and job.status == "succeeded"
            logged = [
                (e.type, e.data)
                for jid in (job_id, skipping)
                for e in store_events.list_events(session, jid)
                if e.data.get("format") == "onnx"
            ]
    finally:
        engine.dispose()
    assert [(kind, data["status"]) for kind, data in logged] == [
        ("message", "exported"),
        ("warning", "skipped"),
    ]
    assert logged[0][1]["file"] == "model.onnx"
    assert "data-dependent" in logged[1][1]["reason"]
    assert logged[1][1]["message"].startswith("no model.onnx: ")
