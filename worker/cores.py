"""Sharing a host's CPU cores among the jobs running on it, so that none idles and none fights.

Each job's process holds an exclusive ``flock`` on a file of its own in a directory of the host.
The kernel drops the lock when the process dies, however it dies, so a killed job never keeps
its cores. A job's share is the usable cores divided among the files still locked, the remainder
going to the earliest registered. Reading it costs one directory listing and one non-blocking
lock probe per other job: cheap enough to poll about once a second while training.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from store.settings import Settings
from worker.engine.hooks import ThreadsFn

log = logging.getLogger(__name__)

#: Registration files end so; anything else in the directory (a file being created) is ignored.
SUFFIX = ".job"


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, which cpusets and taskset narrow."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform
        return os.cpu_count() or 1


def host_directory(home: Path) -> Path:
    """Where the jobs of this host register; by host name, since ``home`` may be shared."""
    return home / "cores" / socket.gethostname()


def share_of(cores: int, jobs: int, rank: int) -> int:
    """Threads of the job ranked ``rank`` (0 = earliest) among ``jobs`` sharing ``cores``."""
    base, extra = divmod(cores, jobs)
    return max(1, base + (1 if rank < extra else 0))


class CoreShare:
    """This process's registration as an active job of the host, while the ``with`` block runs.

    ``threads()`` says how many CPU threads the job may use now. Where ``directory`` cannot be
    used (read-only, or a file in the way), the job is not registered and ``threads()`` is
    ``fallback``.
    """

    def __init__(self, directory: Path, cores: int, *, fallback: int = 1) -> None:
        if cores < 1:
            raise ValueError(f"cores must be at least 1, not {cores}")
        if fallback < 1:
            raise ValueError(f"fallback must be at least 1, not {fallback}")
        self.directory = Path(directory)
        self.cores = cores
        self.fallback = fallback
        self._fd: int | None = None
        self._name: str | None = None
        self._entered = self._active = False

    @property
    def registered(self) -> bool:
        """Whether the job takes part in sharing (False: the directory was unusable)."""
        return self._name is not None

    def __enter__(self) -> CoreShare:
        if self._entered:
            raise RuntimeError("a CoreShare can be entered only once")
        self._entered = self._active = True
        try:
            self._register()
        except OSError as exc:
            log.warning(
                "CPU cores not shared (%s is unusable: %s); using %d thread(s)",
                self.directory,
                exc.strerror or exc,
                self.fallback,
            )
        return self

    def _register(self) -> None:
        """Lock the file before it gets its final name, so that no prober sees it unlocked."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        temporary = self.directory / f".{name}.new"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            temporary.replace(self.directory / name)
        except OSError:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._fd, self._name = fd, name

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._active = False
        if self._fd is None or self._name is None:
            return
        # Unlinked while still locked: no prober can take a live job's file for a dead one.
        with contextlib.suppress(OSError):
            (self.directory / self._name).unlink()
        os.close(self._fd)
        self._fd = None

    def threads(self) -> int:
        """CPU threads this job may use now (at least 1)."""
        if not self._active:
            raise RuntimeError("CoreShare.threads() is only meaningful inside its with block")
        if self._name is None:
            return self.fallback
        try:
            names = [p.name for p in self.directory.iterdir() if p.name.endswith(SUFFIX)]
        except OSError:
            return self.fallback
        active = sorted({self._name, *(n for n in names if n != self._name and self._held(n))})
        return share_of(self.cores, len(active), active.index(self._name))

    def _held(self, name: str) -> bool:
        """Whether another job still holds ``name``; a file nobody holds is removed."""
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # that job just ended
            return False
        except OSError:  # cannot tell: count it, so as never to oversubscribe
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held (EWOULDBLOCK), or cannot tell
            return True
        else:
            with contextlib.suppress(OSError):  # another prober may have removed it first
                path.unlink()
            return False
        finally:
            os.close(fd)


@contextlib.contextmanager
def thread_budget(settings: Settings, slots: int | None = None) -> Iterator[ThreadsFn]:
    """The engine's thread budget for one job, as ``LTH_TORCH_THREADS`` says.

    N > 0: always N. 0: a share of the host's usable cores for as long as the block runs; if
    the host's directory is unusable, the cores divided by the worker's ``slots`` (its
    concurrency, default ``LTH_WORKER_CONCURRENCY``).
    """
    fixed = settings.torch_threads
    if fixed > 0:
        yield lambda: fixed
        return
    cores = usable_cores()
    slots = slots or settings.worker_concurrency or cores
    with CoreShare(host_directory(settings.home), cores, fallback=max(1, cores // slots)) as share:
        yield share.threads
