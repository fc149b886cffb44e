"""Helpers of the client tests: starting ``lth serve`` as a subprocess, running the ``lth``
command, small specs that finish in seconds, and a TCP proxy that cuts a connection.

A module of its own (not conftest) so that test modules can import it by a unique name.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from client.sdk import Client

SMALL_SPEC: dict[str, Any] = {
    "model": {"arch": "mlp", "hidden_sizes": [24]},
    "dataset": {
        "uri": "synthetic://?classes=4&shape=1,6,6&train=400&test=200",
        "validation_size": 80,
    },
    "training": {"steps": "60it", "eval_every": "20it", "batch_size": 20},
    "pruning": {"rounds": 1},
}
#: Runs long enough (minutes) to be cancelled or interrupted while it trains.
LONG_TRAINING: dict[str, Any] = {
    "steps": "200000it",
    "eval_every": "2000it",
    "checkpoint_every": "100000it",
    "batch_size": 20,
}
_CLEARED = ("LTH_DATABASE_URL", "LTH_BROKER_URL", "LTH_ARTIFACT_ROOT", "LTH_URL", "LTH_API_KEY")


def small_spec(**overrides: Any) -> dict[str, Any]:
    """A fresh small spec with top-level fields replaced (e.g. ``labels=...``). It trains even
    when an earlier test of the shared server ran the same spec (``reuse`` false), so every
    test sees its job's own training."""
    return copy.deepcopy(SMALL_SPEC) | {"reuse": False} | overrides


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    return env | {"LTH_HOME": str(home), **extra}


@dataclass
class Server:
    """A running ``lth serve`` and how to reach it."""

    url: str
    home: Path
    process: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, api_key: str | None = None, **kwargs: Any) -> Client:
        return Client(self.url, api_key, **kwargs)

    def cli(
        self, *args: str, api_key: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``lth ARGS`` against this server and return its result."""
        return run_cli(*args, url=self.url, api_key=api_key, timeout=timeout)

    def cli_process(self, *args: str) -> subprocess.Popen[str]:
        """Start ``lth ARGS`` against this server without waiting for it. Ctrl-C reaches it
        as it would from a terminal, even when the tests themselves run with SIGINT ignored
        (a background job of a non-interactive shell is started so, and passes that on)."""
        return subprocess.Popen(
            cli_argv(*args),
            env=cli_env(self.url, None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def cli_env(url: str, api_key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["LTH_URL"] = url
    env["LTH_RETRIES"] = "1"
    if api_key is not None:
        env["LTH_API_KEY"] = api_key
    return env


def run_cli(
    *args: str, url: str, api_key: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv(*args),
        env=cli_env(url, api_key),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and everything it started (its own process group)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a worker that outlived the server


@contextlib.contextmanager
def serving(home: Path, **settings: str) -> Iterator[Server]:
    """``lth serve`` with ``LTH_HOME=home`` and ``settings`` (LTH_* values) until exit."""
    port = free_port()
    env = _base_env(
        home,
        LTH_HOST="127.0.0.1",
        LTH_PORT=str(port),
        LTH_HEARTBEAT_SECONDS="0.2",
        LTH_SSE_POLL_SECONDS="0.1",
        **settings,
    )
    home.mkdir(parents=True, exist_ok=True)
    with (home / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            cli_argv("serve"), env=env, stdout=log, stderr=log, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"lth serve exited with {process.returncode}; see {home}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"lth serve was not ready in 90 s; see {home}")
            time.sleep(0.2)
        yield Server(url, home, process)
    finally:
        _stop(process)


def mint_key(home: Path, tenant: str) -> str:
    """``lth keys create TENANT`` on the server's database."""
    result = subprocess.run(
        cli_argv("keys", "create", tenant),
        env=_base_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


class CuttingProxy:
    """A TCP proxy to a real server that cuts its *first* connection after ``cut_after`` bytes
    of the server's answer (a dropped connection, as a flaky network makes one). It records the
    bytes each connection sent upstream."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        self.upstream = httpx.URL(upstream)
        self.cut_after = cut_after
        self.requests: list[bytearray] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.requests.append(bytearray())
            index = len(self.requests) - 1
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, index: int) -> None:
        upstream = socket.create_connection((self.upstream.host, self.upstream.port or 80))
        limit = self.cut_after if index == 0 else None

        def forward_requests() -> None:
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    self.requests[index] += data
                    upstream.sendall(data)

        threading.Thread(target=forward_requests, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    conn.sendall(data[: limit - sent])
                    break
                conn.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (conn, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()
