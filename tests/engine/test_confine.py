"""The one confinement rule for file locations, and the engine applying it to ``model.weights``.

The service's admission check and the worker call the same function, so a location cannot be
read as one file at submission and as another in the worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from api_schemas.confine import PathRefusedError, confine, confine_path, location_path
from api_schemas.spec import JobSpec
from worker.engine.data import DataConfig, resolve_path
from worker.engine.errors import DataError
from worker.engine.imp import IMPRun
from worker.engine.models import build_model

DATA = "synthetic://?classes=4&shape=1,6,6&train=60&test=20"
UP = "/.." * 40


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """Two data roots, the second the upload area, with another tenant's upload in it."""
    data, uploads, outside = tmp_path / "data", tmp_path / "datasets", tmp_path / "outside"
    for folder in (data, uploads / "ten_b", outside):
        folder.mkdir(parents=True)
    upload = uploads / "ten_b" / "ds_b.safetensors"
    upload.write_bytes(b"theirs")
    (outside / "secret").write_bytes(b"secret")
    (data / "mine.safetensors").write_bytes(b"mine")
    (data / "to-upload").symlink_to(upload)
    (data / "to-outside").symlink_to(outside / "secret")
    return {"data": data, "uploads": uploads, "upload": upload, "outside": outside}


def _refusal(location: str, tree: dict[str, Path]) -> str:
    with pytest.raises(PathRefusedError) as refused:
        confine(location, [tree["data"], tree["uploads"]], excluded=[tree["uploads"]])
    return str(refused.value)


def test_a_path_or_file_uri_inside_a_root_is_its_real_path(tree: dict[str, Path]) -> None:
    roots, mine = [tree["data"], tree["uploads"]], tree["data"] / "mine.safetensors"
    dotted = f"{tree['data']}/./x/../mine.safetensors"
    for location in (str(mine), f"file://{mine}", f"file:{mine}", dotted):
        assert confine(location, roots, excluded=[tree["uploads"]]) == mine
    spaced = tree["data"] / "a b#1.safetensors"
    assert confine(f"file://{tree['data']}/a%20b%231.safetensors", roots) == spaced
    assert location_path(f"npz://{mine}", schemes=("npz",)) == str(mine)
    # Existence is for the reader to test: the check itself must not probe the file system.
    assert confine(f"{tree['data']}/missing", roots) == tree["data"] / "missing"


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("{upload}?{up}/usr", "query or fragment"),
        ("{upload}?/../../../data", "query or fragment"),
        ("{upload}#{up}/usr", "query or fragment"),
        ("file://{upload}?x=1", "query or fragment"),
        ("file://{upload}#", "query or fragment"),
        ("{data}/w?", "query or fragment"),
        ("file://localhost{data}/mine.safetensors", "host"),
        ("s3://bucket{data}/mine.safetensors", "scheme"),
        ("npz://{data}/mine.safetensors", "scheme"),
        ("mine.safetensors", "absolute"),
        ("file:mine.safetensors", "absolute"),
        ("", "absolute"),
        ("{data}/mine\x00.safetensors", "NUL"),
        ("file://{data}/mine%00.safetensors", "NUL"),
        ("file://{data}/mi\tne.safetensors", "control"),
        ("{upload}", "dataset://"),
        ("file://{upload}", "dataset://"),
        ("{uploads}", "dataset://"),
        ("{data}/to-upload", "dataset://"),
        ("{data}/../datasets/ten_b", "dataset://"),
        ("{data}/to-outside", "outside the data roots"),
        ("{data}/../outside/secret", "outside the data roots"),
        ("/etc/passwd", "outside the data roots"),
        ("file://[::1", "not a valid"),
    ],
)
def test_hostile_locations_are_refused(location: str, says: str, tree: dict[str, Path]) -> None:
    filled = location.format(up=UP, **{k: str(v) for k, v in tree.items()})
    assert says in _refusal(filled, tree)


def test_without_roots_nothing_is_allowed(tree: dict[str, Path]) -> None:
    with pytest.raises(PathRefusedError, match="no data roots"):
        confine_path(str(tree["data"] / "mine.safetensors"), [])


def test_a_symlinked_root_still_confines(tree: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(tree["data"])
    found = confine(str(tmp_path / "root-link" / "mine.safetensors"), [tmp_path / "root-link"])
    assert found == tree["data"] / "mine.safetensors"
    with pytest.raises(PathRefusedError, match="dataset://"):
        confine_path(str(tree["upload"]), [tmp_path], excluded=[tmp_path / "datasets"])


def test_the_engine_resolver_excludes_and_keeps_literal_file_names(tree: dict[str, Path]) -> None:
    roots = (tree["data"], tree["uploads"])
    with pytest.raises(DataError, match="dataset://"):
        resolve_path(str(tree["upload"]), roots, excluded=(tree["uploads"],))
    # Files found while walking a dataset keep their names, '#' included.
    odd = tree["data"] / "img#1.png"
    odd.write_bytes(b"png")
    assert resolve_path(str(odd), roots) == odd


# --- the engine refuses what admission refuses ---------------------------------------------


def _spec(weights: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden_sizes": [8], "weights": weights},
            "dataset": {"uri": DATA, "validation_size": 0},
            "training": {"batch_size": 10, "steps": "2it", "eval_every": "1it"},
            "pruning": {"rounds": 1},
        }
    )


def _fitting_weights(path: Path) -> None:
    """Weights that load into the spec's model, so only confinement can stop them."""
    state = build_model(_spec(str(path)).model, (1, 6, 6), 4).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def test_engine_refuses_a_query_or_fragment_that_hides_another_file(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    _fitting_weights(tree["upload"])
    # Without the exclusion the upload lies in a root: the query alone must stop it.
    config = DataConfig(roots=(tree["data"], tree["uploads"]))
    for index, weights in enumerate(
        (
            f"{tree['upload']}?/../../../data",
            f"{tree['upload']}#/../../../data",
            f"file://{tree['upload']}?{UP}{tree['data']}",
            f"file://localhost{tree['upload']}",
            f"s3:/{tree['upload']}",
        )
    ):
        with pytest.raises(DataError, match=r"model\.weights"):
            IMPRun(_spec(weights), tmp_path / f"out{index}", config)


def test_engine_refuses_the_upload_area_and_loads_weights_in_a_root(
    tree: dict[str, Path], tmp_path: Path
) -> None:
    _fitting_weights(tree["upload"])
    mine = tree["data"] / "mine.safetensors"
    _fitting_weights(mine)
    (tree["data"] / "to-upload-weights").symlink_to(tree["upload"])
    config = DataConfig(roots=(tree["data"], tree["uploads"]), excluded=(tree["uploads"],))
    for index, weights in enumerate(
        (
            str(tree["upload"]),
            f"file://{tree['upload']}",
            str(tree["data"] / "to-upload-weights"),
            f"{tree['data']}/../datasets/ten_b/ds_b.safetensors",
        )
    ):
        with pytest.raises(DataError, match="dataset://"):
            IMPRun(_spec(weights), tmp_path / f"out{index}", config)
    for index, weights in enumerate((str(mine), f"file://{mine}")):
        run = IMPRun(_spec(weights), tmp_path / f"ok{index}", config)
        assert torch.equal(run.model.state_dict()["fc1.weight"], _loaded(mine)["fc1.weight"])


def _loaded(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
