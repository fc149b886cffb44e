"""``lth run`` as a user runs it: a real process on the real Fashion-MNIST files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from api_schemas.examples import minimal_spec
from api_schemas.results import RoundResult
from worker.engine.artifacts import load_ticket, verify

LTH = str(Path(sys.executable).parent / "lth")
MINIMAL = minimal_spec()


def lth(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LTH, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_minimal_spec_on_real_fashion_mnist(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    spec = dict(MINIMAL, dataset={"uri": f"idx://{fashion_mnist_dir}", "validation_size": 5000})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = lth("run", "spec.json", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Winning ticket" in done.stdout and "64.06%" in done.stdout

    out = tmp_path / "out"
    rounds = [RoundResult.model_validate(r) for r in json.loads((out / "rounds.json").read_text())]
    assert [r.round for r in rounds] == [0, 1, 2]
    assert rounds[2].layer_density == pytest.approx(
        {"fc1.weight": 0.64, "fc2.weight": 0.64, "fc3.weight": 0.81}
    )
    assert rounds[0].ticket.accuracy > 0.75  # 300 Adam steps of LeNet reach ~80% on Fashion-MNIST
    assert set(rounds[1].controls) == {"random_reinit"}
    assert verify(out) == []
    ticket = load_ticket(out)
    assert set(ticket.mask) == {"fc1.weight", "fc2.weight", "fc3.weight"}


@pytest.mark.e2e
def test_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = dict(MINIMAL, training={"steps": "3 hundred"})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = lth("run", "spec.json", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert "training.steps" in done.stderr and "'500it' or '20ep'" in done.stderr


@pytest.mark.e2e
def test_data_outside_the_roots_exits_1_with_the_reason(tmp_path: Path) -> None:
    spec = dict(MINIMAL, dataset={"uri": "npz:///etc/passwd.npz"})
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))  # JSON is valid YAML
    done = lth("run", "spec.yaml", "--out", "out", cwd=tmp_path)
    assert done.returncode == 1
    assert "/etc/passwd.npz" in done.stderr


@pytest.mark.e2e
def test_a_non_empty_directory_needs_resume(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    (tmp_path / "spec.json").write_text(json.dumps(MINIMAL))
    done = lth("run", "spec.json", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2 and "--resume" in done.stderr
