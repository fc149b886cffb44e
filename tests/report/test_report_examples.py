"""The examples: every spec in examples/ is a valid JobSpec, and both pipeline scripts gate on
the ticket's accuracy drop, run with the real ``lth`` command and SDK against the real API (this
test plays the worker); a stand-in ``lth`` checks that the shell script passes its exit code on."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api_schemas.results import RunSummary
from api_schemas.spec import JobSpec
from api_schemas.specfile import parse_spec_text
from store.db import make_engine, make_sessionmaker
from store.jobs import claim_job, finish_job
from tests.report.conftest import TINY_SPEC, Server

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
SPECS = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".json", ".yaml", ".yml"))


def load(path: Path) -> Any:
    return parse_spec_text(path.read_text(), json_only=path.suffix == ".json")


def test_the_paper_setups_are_there() -> None:
    names = {p.name for p in SPECS}
    assert {
        "lenet_mnist.yaml",
        "conv2_cifar10.yaml",
        "conv4_cifar10.yaml",
        "conv6_cifar10.yaml",
        "vgg19_cifar10.yaml",
        "resnet20_cifar10_late_rewind.yaml",
        "lenet_fashion_mnist.yaml",
        "lenet_fashion_mnist.json",
    } <= names


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_example_spec_is_valid(path: Path) -> None:
    spec = JobSpec.model_validate(load(path))
    if path.suffix == ".yaml":
        assert path.read_text().startswith("#"), "each example says where its numbers come from"
        assert spec.name


def test_global_pruning_examples_leave_the_output_layer_dense() -> None:
    """`exclude: [fc]` names the engine's output layer, so only conv weights are pruned."""
    from torch import nn

    from api_schemas.spec import ModelSpec
    from worker.engine.masks import prunable_layers, unknown_exclusions
    from worker.engine.models import build_model

    for name in ("resnet20_cifar10_late_rewind.yaml", "vgg19_cifar10.yaml"):
        spec = JobSpec.model_validate(load(EXAMPLES / name))
        model = build_model(ModelSpec(arch=spec.model.arch), (3, 32, 32), 10)
        modules = dict(model.named_modules())
        assert unknown_exclusions(model, spec.pruning.exclude) == []
        kinds = {
            type(modules[layer.key.removesuffix(".weight")])
            for layer in prunable_layers(model, spec.pruning.exclude)
        }
        assert kinds == {nn.Conv2d}


# ------------------------------------------------------------------------------ pipeline.sh

FAKE_LTH = """#!/usr/bin/env bash
echo "$@" >> "$LTH_CALLS"
case "$1" in
  submit) cat "$LTH_JOB"; exit "${LTH_SUBMIT_EXIT:-0}" ;;
  jobs) exit 0 ;;
esac
exit 2
"""


def run_sh(
    tmp_path: Path, result: dict[str, float], max_drop: str, submit_exit: int = 0
) -> tuple[int, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    lth = bin_dir / "lth"
    lth.write_text(FAKE_LTH)
    lth.chmod(lth.stat().st_mode | stat.S_IXUSR)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"id": "job_x", "status": "succeeded", "result": result}))
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "LTH_CALLS": str(calls),
        "LTH_JOB": str(job),
        "LTH_SUBMIT_EXIT": str(submit_exit),
    }
    done = subprocess.run(
        ["bash", str(EXAMPLES / "pipeline.sh"), "spec.yaml", max_drop, str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, calls.read_text()


def test_pipeline_sh_passes_lths_exit_code_on(tmp_path: Path) -> None:
    good = {"ticket_accuracy": 0.885, "dense_accuracy": 0.89, "ticket_density": 0.2}
    code, calls = run_sh(tmp_path, good, "1.0")
    assert code == 0
    assert calls.splitlines() == [
        "submit spec.yaml --wait --json",
        f"jobs download job_x {tmp_path / 'out'}",
    ]
    code, calls = run_sh(tmp_path, good, "1.0", submit_exit=3)  # cancelled
    assert code == 3 and "download" not in calls


# ------------------------------------------------------------------------------ pipeline.py


@pytest.fixture
def finishing_worker(server: Server, tiny_run: Path) -> Iterator[RunSummary]:
    """Plays the worker: every submitted job succeeds with the tiny run's artifacts."""
    sessions = make_sessionmaker(make_engine(server.settings.database_url))
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    summary = RunSummary.model_validate(manifest["summary"])

    def worker(job_id: str) -> None:
        with sessions.begin() as session:
            assert claim_job(session, job_id, "test-worker").claimed
        shutil.copytree(tiny_run, server.settings.artifact_root / job_id, dirs_exist_ok=True)
        with sessions.begin() as session:
            finish_job(session, job_id, "succeeded", result=summary)

    server.on_enqueue = worker
    yield summary
    server.on_enqueue = None


@pytest.mark.e2e
def test_pipelines_against_the_service(
    server: Server, finishing_worker: RunSummary, tmp_path: Path
) -> None:
    """Both scripts with the real ``lth`` command and SDK: download when the ticket is good
    enough, exit 10 without downloading when it lost more than allowed."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_SPEC))
    bin_dir = str(Path(sys.executable).parent)  # where the venv's ``lth`` lives
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "LTH_URL": server.url,
        "LTH_API_KEY": server.new_key(),
    }
    drop = 100 * (finishing_worker.dense_accuracy - finishing_worker.ticket_accuracy)
    commands: dict[str, Callable[[str, str], list[str]]] = {
        "sh": lambda limit, dest: ["bash", str(EXAMPLES / "pipeline.sh"), str(spec), limit, dest],
        "py": lambda limit, dest: [
            sys.executable,
            str(EXAMPLES / "pipeline.py"),
            str(spec),
            "--max-drop",
            limit,
            "--dest",
            dest,
        ],
    }
    for kind, command in commands.items():
        for limit, expected in ((drop + 0.5, 0), (drop - 0.5, 10)):
            dest = tmp_path / f"{kind}-{expected}"
            done = subprocess.run(
                command(str(limit), str(dest)),
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == expected, (kind, done.stdout, done.stderr)
            assert (dest / "ticket.safetensors").exists() == (expected == 0), kind
            if expected == 0:
                assert "/report" in done.stdout, kind
