"""A real ``lth serve`` for benchmarks: embedded defaults under a temporary LTH_HOME, as ``lth
demo`` starts it, and the peak memory of the processes it runs jobs in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from bench.common import FASHION_MNIST


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_env(home: Path) -> dict[str, str]:
    """This environment with ``home`` as LTH_HOME, the benchmark's data directory readable and
    the embedded defaults, whatever the shell has set."""
    env = dict(
        os.environ,
        LTH_HOME=str(home),
        LTH_DATA_ROOTS=f"/usr/share/datasets:{home / 'datasets'}:{FASHION_MNIST.parent}",
    )
    for variable in ("LTH_DATABASE_URL", "LTH_BROKER_URL", "LTH_ARTIFACT_ROOT", "LTH_API_KEY"):
        env.pop(variable, None)
    return env


def service_env(home: Path, port: int) -> dict[str, str]:
    """What ``lth demo`` gives the service: no authentication, localhost only."""
    return bench_env(home) | {
        "LTH_AUTH": "disabled",
        "LTH_HOST": "127.0.0.1",
        "LTH_PORT": str(port),
        "LTH_RECONCILE_EVERY_S": "5",
    }


class LocalService:
    """``with LocalService() as service:`` starts ``lth serve`` and waits until it is ready."""

    def __init__(
        self, ready_timeout_s: float = 180.0, env: Mapping[str, str] | None = None
    ) -> None:
        """``env`` overrides the embedded defaults (a PostgreSQL database, a Redis broker)."""
        self.ready_timeout_s = ready_timeout_s
        self.extra_env = dict(env or {})
        self._tmp = tempfile.TemporaryDirectory(prefix="lth-bench-")
        self.home = Path(self._tmp.name)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Self:
        log = (self.home / "service.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "client", "serve"],
            env=service_env(self.home, self.port) | self.extra_env,
            stdout=log,
            stderr=log,
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(base_url=self.url, timeout=10) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"lth serve exited with code {self.process.returncode}; "
                        f"log: {self.home / 'service.log'}"
                    )
                try:
                    if probe.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"lth serve was not ready within {self.ready_timeout_s:.0f} s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmp.cleanup()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRss:
    """Samples VmHWM (a process's own peak resident set) of every descendant of ``root`` (and of
    ``root`` itself with ``include_root``) while running: for the service, its worker and the
    children it trains in, whose peaks the service cannot report."""

    def __init__(self, root: int, *, include_root: bool = False, interval_s: float = 0.2) -> None:
        self.root = root
        self.include_root = include_root
        self.interval_s = interval_s
        self.peaks_kib: dict[int, int] = {}
        self.commands: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        pids = _descendants(self.root) + ([self.root] if self.include_root else [])
        for pid in pids:
            peak = _vm_hwm_kib(pid)
            if peak is None:
                continue
            self.peaks_kib[pid] = max(peak, self.peaks_kib.get(pid, 0))
            if pid not in self.commands:
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    raw = b""
                self.commands[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()

    def report(self) -> dict[str, object]:
        """The largest single-process peak (MiB) and every process's, largest first."""
        ordered = sorted(self.peaks_kib.items(), key=lambda item: -item[1])
        return {
            "peak_rss_mib": ordered[0][1] / 1024 if ordered else None,
            "processes": [
                {"pid": pid, "command": self.commands.get(pid, ""), "peak_rss_mib": kib / 1024}
                for pid, kib in ordered
            ],
        }
