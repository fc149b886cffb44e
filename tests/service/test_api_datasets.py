"""Dataset uploads over real HTTP: validation without unpickling, size caps, isolation."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from tests.service.stored_uploads import stored_uploads

ProblemCheck = Callable[..., dict[str, Any]]


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good_arrays(train: int = 20, test: int = 5) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((train, 1, 4, 4), dtype=np.float32),
        "y_train": np.arange(train, dtype=np.int64) % 3,
        "x_test": rng.random((test, 1, 4, 4), dtype=np.float32),
        "y_test": np.arange(test, dtype=np.int64) % 3,
    }


class _Exploit:
    """Unpickling this would create ``marker``: the test proves the server never unpickles."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _upload(client: Any, filename: str, content: bytes, **data: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


def test_upload_list_get_delete(live: Any, expect_problem: ProblemCheck) -> None:
    content = _npz(**_good_arrays())
    with live.tenant_client() as client, live.tenant_client() as stranger:
        response = _upload(client, "tiny.npz", content, name="tiny shapes")
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["id"].startswith("ds_") and dataset["uri"] == f"dataset://{dataset['id']}"
        assert response.headers["location"].endswith(f"/v1/datasets/{dataset['id']}")
        assert (dataset["name"], dataset["format"], dataset["size"]) == (
            "tiny shapes",
            "npz",
            len(content),
        )
        assert (dataset["train_size"], dataset["test_size"]) == (20, 5)
        assert (dataset["input_shape"], dataset["num_classes"]) == ([1, 4, 4], 3)
        import hashlib

        assert dataset["sha256"] == hashlib.sha256(content).hexdigest()
        assert client.get("/v1/datasets").json()["data"] == [dataset]
        assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset
        expect_problem(stranger.get(f"/v1/datasets/{dataset['id']}"), 404)
        expect_problem(stranger.delete(f"/v1/datasets/{dataset['id']}"), 404)
        assert stranger.get("/v1/datasets").json()["data"] == []

        (key,) = (k for k in stored_uploads(live) if k.endswith(f"/datasets/{dataset['id']}.npz"))
        assert stored_uploads(live)[key] == content
        # The received file went to the store: nothing stays in the API's receiving area.
        assert not [p for p in live.settings.upload_root.rglob("*") if p.is_file()]

        # The dataset can be used by its owner only.
        spec = {
            "model": {"arch": "lenet_300_100"},
            "dataset": {"uri": dataset["uri"], "validation_size": 5},
            "training": {"batch_size": 10},
        }
        assert client.post("/v1/jobs", json=spec).status_code == 202
        # Its size is known from the upload: a hold-out of all 20 examples is refused now.
        too_big = {**spec, "dataset": {"uri": dataset["uri"], "validation_size": 20}}
        assert expect_problem(client.post("/v1/jobs", json=too_big), 422)["errors"][0]["loc"] == (
            "dataset.validation_size"
        )
        expect_problem(stranger.post("/v1/jobs", json=spec), 422)
        # A file URI into the store's uploads is refused even for the owner.
        spec["dataset"]["uri"] = f"npz://{live.settings.artifact_root / key}"
        assert expect_problem(client.post("/v1/jobs", json=spec), 422)["errors"][0]["loc"] == (
            "dataset.uri"
        )

        assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
        assert key not in stored_uploads(live)
        expect_problem(client.get(f"/v1/datasets/{dataset['id']}"), 404)


def test_safetensors_upload(live: Any) -> None:
    content = save(_good_arrays(train=8, test=4))
    with live.tenant_client() as client:
        response = _upload(client, "tiny.safetensors", content)
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["format"], body["name"], body["train_size"], body["test_size"]) == (
            "safetensors",
            "tiny.safetensors",
            8,
            4,
        )


def test_pickled_npz_is_rejected_unloaded(
    live: Any, tmp_path: Path, expect_problem: ProblemCheck
) -> None:
    marker = tmp_path / "pwned"
    arrays: dict[str, Any] = _good_arrays()
    arrays["x_train"] = np.array([_Exploit(marker)] * 20, dtype=object)
    with live.tenant_client() as client:
        body = expect_problem(_upload(client, "evil.npz", _npz(**arrays)), 422)
        assert body["errors"][0]["loc"] == "file"
        assert "pickle" in body["errors"][0]["msg"]
        # A bare pickle stream named .npz (classic exploit) is refused the same way.
        raw_pickle = b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
        body = expect_problem(_upload(client, "evil2.npz", raw_pickle), 422)
        assert "pickle" in body["errors"][0]["msg"]
        assert client.get("/v1/datasets").json()["data"] == []
    assert not marker.exists()
    assert not list(live.settings.upload_root.glob("*/.upload-*"))


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("a.npz", _npz(x_train=np.zeros((2, 2))), "missing arrays y_train, x_test, y_test"),
        (
            "a.npz",
            _npz(**(_good_arrays() | {"y_train": np.zeros(19, dtype=np.int64)})),
            "x_train has 20 examples but y_train has 19",
        ),
        ("a.npz", b"not a zip file", "not a readable .npz"),
        ("a.npz", b"PK\x03\x04" + b"x" * 200, "not a readable .npz"),
        ("a.npz", _npz(**_good_arrays())[:-300], "not a readable .npz"),
        (
            "a.npz",
            _npz(**(_good_arrays() | {"y_train": np.zeros(20, dtype=np.float32)})),
            "y_train must hold integer class indices",
        ),
        (
            "a.npz",
            _npz(**(_good_arrays() | {"y_test": -np.ones(5, dtype=np.int64)})),
            "y_test holds negative labels",
        ),
        (
            "a.npz",
            _npz(**(_good_arrays(test=0))),
            "y_test is empty",
        ),
        ("a.safetensors", b"\x00" * 64, "not a readable safetensors"),
        ("a.csv", b"1,2,3", "upload a .npz or .safetensors"),
    ],
)
def test_invalid_uploads(
    live: Any, expect_problem: ProblemCheck, name: str, content: bytes, says: str
) -> None:
    with live.tenant_client() as client:
        body = expect_problem(_upload(client, name, content), 422)
    assert body["errors"][0]["loc"] == "file"
    assert says in body["errors"][0]["msg"]


def test_size_cap(live: Any, expect_problem: ProblemCheck) -> None:
    cap = live.settings.max_upload_bytes
    too_big = b"\0" * (cap + 1)
    with live.tenant_client() as client:
        body = expect_problem(_upload(client, "big.npz", too_big), 413)
        assert body["max_bytes"] == cap

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must cut the stream
            yield (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            for _ in range(cap // 65536 + 4):
                yield b"\0" * 65536
            yield b"\r\n--b--\r\n"

        response = client.post(
            "/v1/datasets",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        expect_problem(response, 413)
        expect_problem(client.post("/v1/datasets", json={"file": "x"}), 415)
        body = expect_problem(client.post("/v1/datasets", files={"other": ("a.npz", b"x")}), 422)
        assert body["errors"][0]["loc"] == "file"
    assert not list(live.settings.upload_root.glob("*/.upload-*"))


def test_damaged_compressed_archive_is_a_422(live: Any, expect_problem: ProblemCheck) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **_good_arrays(train=200))
    damaged = bytearray(buffer.getvalue())
    for offset in range(200, len(damaged) - 200, 7):  # inside the deflate streams
        damaged[offset] ^= 0xFF
    with live.tenant_client() as client:
        body = expect_problem(_upload(client, "damaged.npz", bytes(damaged)), 422)
    assert body["errors"][0]["loc"] == "file"
