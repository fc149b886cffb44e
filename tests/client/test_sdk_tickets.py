"""Using a ticket through the SDK against a real ``lth serve``: the module ``load_ticket`` and
``load_trained`` build equals the engine's dense files bit for bit, ``masks`` needs no torch,
``apply_mask`` keeps pruned weights at zero through further training, and errors are clear."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from lth_client_support import LONG_TRAINING, Server, small_spec
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file
from torch import nn

from client.sdk import (
    AsyncClient,
    JobNotSucceeded,
    MaskMismatch,
    apply_mask,
    tickets,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def assert_state_equals(module: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


@pytest.mark.parametrize(
    ("method", "dense_name", "sparse_name"),
    [
        ("load_ticket", "ticket.safetensors", "ticket.sparse.safetensors"),
        ("load_trained", "trained.safetensors", "trained.sparse.safetensors"),
    ],
)
def test_the_loaded_module_equals_the_engines_dense_file(
    server: Server,
    finished_job: str,
    tmp_path: Path,
    method: str,
    dense_name: str,
    sparse_name: str,
) -> None:
    with server.client() as client:
        module = getattr(client, method)(finished_job, dest=tmp_path / "kept")
        assert isinstance(module, nn.Module)
        listing = {a.name: a for a in client.list_artifacts(finished_job)}
        dense = client.download_artifact(finished_job, dense_name, tmp_path / dense_name)
        mask = load_file(
            str(client.download_artifact(finished_job, "mask.safetensors", tmp_path / "m"))
        )
        # Nothing but the compact file and the manifest was needed, and they stay in dest.
        assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
            "manifest.json",
            sparse_name,
        ]
        assert listing[sparse_name].size < listing[dense_name].size

    assert_state_equals(module, load_file(str(dense)))
    params = dict(module.named_parameters())
    assert mask and all(not params[key][~keep].any() for key, keep in mask.items())
    assert sum(int((~keep).sum()) for keep in mask.values()) > 0, "the job pruned something"
    assert module(torch.zeros(3, 1, 6, 6)).shape == (3, 4)


def test_temporary_downloads_leave_nothing_behind(server: Server, finished_job: str) -> None:
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("lth-ticket-*"))
    with server.client() as client:
        module = client.load_ticket(finished_job)
        masks = client.masks(finished_job)
    assert set(Path(tempfile.gettempdir()).glob("lth-ticket-*")) == before
    assert set(masks) <= set(module.state_dict())


def test_masks_equal_the_mask_file_without_torch(
    server: Server, finished_job: str, tmp_path: Path
) -> None:
    fetched: list[str] = []

    def record(response: httpx.Response) -> None:
        if response.request.method == "GET":
            fetched.append(response.request.url.path.rpartition("/")[2])

    with server.client(event_hooks={"response": [record]}) as client:
        masks = client.masks(finished_job)
        artifacts = client.list_artifacts(finished_job)
        mask_file = client.download_artifact(finished_job, "mask.safetensors", tmp_path / "m")
        compact = client.download_artifact(
            finished_job, "ticket.sparse.safetensors", tmp_path / "ticket.sparse.safetensors"
        )
    reference = load_numpy(str(mask_file))
    assert masks.keys() == reference.keys()
    for key, value in reference.items():
        assert masks[key].dtype == np.bool_ and np.array_equal(masks[key], value), key
    # Both files hold the masks; the smaller one is fetched.
    from_compact = tickets.read_masks(compact)
    assert all(np.array_equal(from_compact[k], v) for k, v in reference.items())
    assert from_compact.keys() == reference.keys()
    smaller = min(
        (a for a in artifacts if a.name in ("mask.safetensors", "ticket.sparse.safetensors")),
        key=lambda a: a.size,
    )
    assert tickets.mask_source(finished_job, artifacts) == smaller
    assert fetched[:3] == [finished_job, "artifacts", smaller.name]

    script = textwrap.dedent(
        f"""
        import sys
        from client.sdk import Client
        with Client({server.url!r}) as client:
            masks = client.masks({finished_job!r})
        assert sorted(masks) == {sorted(reference)!r}, sorted(masks)
        heavy = [m for m in ("torch", "worker") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def train_a_few_steps(module: nn.Module) -> None:
    """Momentum and weight decay would move pruned weights off zero if nothing held them."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 1, 6, 6, generator=generator)
        y = torch.randint(0, 4, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()


def test_apply_mask_keep_pruned_holds_zeros_through_training(
    server: Server, finished_job: str
) -> None:
    with server.client() as client:
        masks = client.masks(finished_job)
        held = client.load_ticket(finished_job)
        free = client.load_ticket(finished_job)
    before = {k: v.detach().clone() for k, v in held.state_dict().items()}

    assert apply_mask(held, masks, keep_pruned=True) is held
    assert {f"{k}_orig" for k in masks} <= {n for n, _ in held.named_parameters()}
    train_a_few_steps(held)
    apply_mask(free, masks)  # zeroes once, holds nothing
    train_a_few_steps(free)

    for key, keep in masks.items():
        owner_name, _, name = key.rpartition(".")
        weight = getattr(held.get_submodule(owner_name), name)
        keep_t = torch.from_numpy(keep)
        assert not weight[~keep_t].any(), f"{key}: a pruned weight moved"
        assert not torch.equal(weight[keep_t], before[key][keep_t]), f"{key}: it did not train"
        assert free.state_dict()[key][~keep_t].any(), "without keep_pruned pruned weights move"


def test_apply_mask_refuses_masks_that_do_not_fit() -> None:
    module = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    original = {k: v.clone() for k, v in module.state_dict().items()}
    zeros = np.zeros((3, 4), dtype=bool)
    with pytest.raises(MaskMismatch, match=r"'fc1.weight'.*it has: 0\.weight, 0\.bias"):
        apply_mask(module, {"0.weight": zeros, "fc1.weight": zeros})
    with pytest.raises(MaskMismatch, match=r"'1.weight' has shape \(3, 4\).*\(2, 3\)"):
        apply_mask(module, {"0.weight": zeros, "1.weight": zeros})
    with pytest.raises(MaskMismatch, match=r"'2\.weight'"):
        apply_mask(module, {"2.weight": zeros})
    assert isinstance(MaskMismatch("x"), ValueError)
    # A refused mask changes nothing, even where its other keys fit.
    assert all(torch.equal(module.state_dict()[k], v) for k, v in original.items())

    half = torch.tensor([[True, False, True, False]] * 3)
    apply_mask(module, {"0.weight": half}, keep_pruned=True)
    apply_mask(module, {"0.weight": torch.ones(3, 4, dtype=torch.bool)})  # pruned already: fine
    assert not module[0].weight[:, 1::2].any() and module[0].weight[:, ::2].all()


def test_a_job_that_has_not_succeeded_has_no_ticket(server: Server) -> None:
    with server.client() as client:
        job = client.create_job(small_spec(training=LONG_TRAINING, labels={"test": "no-ticket"}))
        with pytest.raises(JobNotSucceeded, match=rf"{job.id} is (queued|running)"):
            client.load_ticket(job.id)
        client.cancel_job(job.id)
        job = client.wait(job.id, poll_interval=0.1, timeout=60)
        assert job.status == "cancelled"
        with pytest.raises(JobNotSucceeded, match="is cancelled") as refused:
            client.masks(job.id)
        assert refused.value.job.id == job.id


def test_the_async_client_loads_the_same_ticket(
    server: Server, finished_job: str, tmp_path: Path
) -> None:
    async def load() -> tuple[nn.Module, nn.Module, dict[str, np.ndarray]]:
        async with AsyncClient(server.url) as client:
            ticket = await client.load_ticket(finished_job, dest=tmp_path)
            trained = await client.load_trained(finished_job)
            return ticket, trained, await client.masks(finished_job, dest=tmp_path)

    ticket, trained, masks = asyncio.run(load())
    with server.client() as client:
        assert_state_equals(ticket, client.load_ticket(finished_job).state_dict())
        assert_state_equals(trained, client.load_trained(finished_job).state_dict())
        assert masks.keys() == client.masks(finished_job).keys()
