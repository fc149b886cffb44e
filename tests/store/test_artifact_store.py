"""The artifact-store contract, held by the local store and by S3 (a real moto server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from store.artifact_store import (
    ArtifactStore,
    InvalidKeyError,
    LocalArtifactStore,
    open_artifact_store,
)
from store.settings import Settings
from tests.conftest import settings_fields


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield open_artifact_store(Settings(home=tmp_path / "home"))
        return
    env = request.getfixturevalue("s3_env")
    yield open_artifact_store(Settings(home=tmp_path / "home", **settings_fields(env)))


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_put_list_read_and_hash(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    store.put_file("job_a/rounds/1/mask.safetensors", _file(tmp_path, "m", data))
    store.put_file("job_a/rounds.json", _file(tmp_path, "r", b"[]"))
    store.put_file("job_b/rounds.json", _file(tmp_path, "r2", b"[1]"))

    listed = store.list("job_a/")
    assert [item.key for item in listed] == ["job_a/rounds.json", "job_a/rounds/1/mask.safetensors"]
    assert [item.size for item in listed] == [2, len(data)]
    assert store.sha256(listed[1]) == hashlib.sha256(data).hexdigest()
    assert store.read_bytes("job_b/rounds.json") == b"[1]"
    assert store.read_bytes("job_b/missing.json") is None
    assert store.stat("job_b/missing.json") is None
    found = store.stat("job_a/rounds/1/mask.safetensors")
    assert found is not None and found.size == len(data)
    assert store.sha256(found) == hashlib.sha256(data).hexdigest()


def test_ranges_and_copies(store: ArtifactStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    store.put_file("job_a/trained.safetensors", _file(tmp_path, "t", data))
    assert b"".join(store.open_range("job_a/trained.safetensors", 10, 19)) == data[10:20]
    whole = b"".join(store.open_range("job_a/trained.safetensors", 0, len(data) - 1))
    assert whole == data
    assert store.get_file("job_a/trained.safetensors", tmp_path / "out" / "copy")
    assert (tmp_path / "out" / "copy").read_bytes() == data
    assert not store.get_file("job_a/nothing", tmp_path / "out" / "none")
    assert not (tmp_path / "out" / "none").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["copy"]  # no temporary left
    with pytest.raises(FileNotFoundError):
        list(store.open_range("job_a/nothing", 0, 1))


def test_overwrite_replaces_the_object_and_its_hash(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_file("job_a/rounds.json", _file(tmp_path, "1", b"first"))
    before = store.stat("job_a/rounds.json")
    store.put_file("job_a/rounds.json", _file(tmp_path, "2", b"second!"))
    after = store.stat("job_a/rounds.json")
    assert before is not None and after is not None and after.version != before.version
    assert store.read_bytes("job_a/rounds.json") == b"second!"
    assert store.sha256(after) == hashlib.sha256(b"second!").hexdigest()


def test_hidden_names_are_not_listed(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_file("job_a/.report-draft.html", _file(tmp_path, "d", b"draft"))
    store.put_file("job_a/rounds.json", _file(tmp_path, "r", b"[]"))
    assert [item.key for item in store.list("job_a/")] == ["job_a/rounds.json"]


def test_delete_prefix_removes_one_run_only(store: ArtifactStore, tmp_path: Path) -> None:
    for key in ("job_a/x", "job_a/rounds/1/y", "job_a/.hidden", "job_ab/z", "uploads/t/ds/w"):
        store.put_file(key, _file(tmp_path, "f", key.encode()))
    assert store.delete_prefix("job_a/") == 3
    assert store.list("job_a/") == []
    assert [item.key for item in store.list("")] == ["job_ab/z", "uploads/t/ds/w"]
    assert store.delete_prefix("job_gone/") == 0
    with pytest.raises(ValueError):
        store.delete_prefix("")
    store.delete("job_ab/z")
    store.delete("job_ab/z")  # twice: nothing to delete is not an error
    assert store.stat("job_ab/z") is None


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "a//b", "a/./b", "..", "a\\b", "a\x00b", "dir/", "a\nb"]
)
def test_bad_keys_are_refused(store: ArtifactStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put_file(key, _file(tmp_path, "f", b"x"))
    with pytest.raises(InvalidKeyError):
        store.read_bytes(key)


def test_local_store_never_follows_links(tmp_path: Path) -> None:
    secret = _file(tmp_path, "secret", b"not yours")
    root = tmp_path / "artifacts"
    (root / "job_a").mkdir(parents=True)
    (root / "job_a" / "leak.json").symlink_to(secret)
    (root / "job_b").symlink_to(tmp_path)  # a linked run folder
    store = LocalArtifactStore(root)
    assert store.read_bytes("job_a/leak.json") is None
    assert store.stat("job_b/secret") is None
    assert store.list("job_a/") == [] and store.list("job_b/") == []
    assert store.delete_prefix("job_b/") == 0 and secret.exists()


def test_presigned_urls(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_file("job_a/ticket.safetensors", _file(tmp_path, "t", b"ticket bytes"))
    url = store.presigned_url(
        "job_a/ticket.safetensors", expires_s=60, filename="ticket.safetensors"
    )
    if isinstance(store, LocalArtifactStore):
        assert url is None  # a folder cannot sign anything
        return
    assert url is not None
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"ticket bytes"
    assert "ticket.safetensors" in answer.headers["content-disposition"]
    tampered = url.replace("ticket.safetensors", "other.safetensors", 1)
    assert httpx.get(tampered).status_code == 403


def test_settings_refuse_presigned_without_s3(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="presigned"):
        Settings(home=tmp_path, artifact_redirect="presigned")
    with pytest.raises(ValueError, match="bucket"):
        Settings(home=tmp_path, artifact_url="s3://")
    with pytest.raises(ValueError, match="file:///"):
        Settings(home=tmp_path, artifact_url="ftp://x/y")
