"""Shared by the report tests: a tiny real engine run, the real API on a free port, and Debian's
Chromium to look at reports."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from store.db import make_engine, make_sessionmaker
from store.tenants import create_api_key
from tests.conftest import require

#: Small enough to train in a few seconds, with both controls and a validation split.
TINY_SPEC: dict[str, Any] = {
    "name": 'tiny <run> & "friends"',
    "model": {"arch": "mlp", "hidden_sizes": [24]},
    "dataset": {
        "uri": "synthetic://?classes=4&shape=1,6,6&train=400&test=200",
        "validation_size": 80,
    },
    "training": {"steps": "60it", "eval_every": "20it", "batch_size": 20, "device": "cpu"},
    "pruning": {"rounds": 2, "controls": ["random_reinit", "random_prune"]},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory of :data:`TINY_SPEC` (rounds.json, manifest.json, tensors).

    Tests copy it before changing anything in it."""
    from api_schemas.spec import JobSpec
    from worker.engine.data import DataConfig
    from worker.engine.imp import run

    root = tmp_path_factory.mktemp("tiny-run")
    out = root / "run"
    run(JobSpec.model_validate(TINY_SPEC), out, DataConfig(roots=(root,)))
    return out


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (``apt-get install chromium``)."""
    path = shutil.which("chromium")
    require(path is not None, "Debian's chromium is not installed (apt-get install chromium)")
    assert path is not None
    return path


@dataclass
class Server:
    """The running API; ``on_enqueue`` (when set) plays the worker for each submitted job."""

    url: str
    settings: Settings
    new_key: Callable[[], str]
    on_enqueue: Callable[[str], None] | None = field(default=None)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.new_key()}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real app under uvicorn on 127.0.0.1 (SQLite store), as tests/service/ starts it."""
    home = tmp_path_factory.mktemp("lth-home")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'lth.db'}", broker_url=None)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)

    def new_key() -> str:
        with sessions.begin() as session:
            return create_api_key(session, f"tenant-{uuid.uuid4().hex[:10]}")

    def enqueue(job_id: str, device: str) -> None:
        if live.on_enqueue is not None:
            threading.Thread(target=live.on_enqueue, args=(job_id,), daemon=True).start()

    app = create_app(settings, enqueue=enqueue)
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=2)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    live = Server(f"http://127.0.0.1:{sock.getsockname()[1]}", settings, new_key)
    yield live
    uv.should_exit = True
    thread.join(10)
    engine.dispose()
