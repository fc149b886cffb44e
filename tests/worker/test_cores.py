"""Sharing cores among the jobs of a host, with real processes holding real locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.settings import Settings
from worker.cores import SUFFIX, CoreShare, host_directory, share_of, thread_budget, usable_cores

#: A job's process: registers, then answers each line on stdin with its threads() now.
JOB = """
import sys
from pathlib import Path
from worker.cores import CoreShare

with CoreShare(Path(sys.argv[1]), int(sys.argv[2])) as share:
    print("ready", flush=True)
    for _ in sys.stdin:
        print(share.threads(), flush=True)
"""


class Job:
    """Another job of the host, in a process of its own."""

    def __init__(self, directory: Path, cores: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", JOB, str(directory), str(cores)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == "ready"

    def read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def threads(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write("?\n")
        self.process.stdin.flush()
        return int(self.read())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)  # no clean-up runs: only the kernel's
        self.process.wait(timeout=10)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for job in started:
        if job.process.poll() is None:
            job.kill()
        for stream in (job.process.stdin, job.process.stdout):
            if stream is not None:
                stream.close()


def registered(directory: Path) -> int:
    return sum(1 for path in directory.iterdir() if path.name.endswith(SUFFIX))


def test_shares_follow_jobs_starting_and_being_killed(tmp_path: Path, jobs: list[Job]) -> None:
    directory = tmp_path / "cores"  # missing: created on entry
    with CoreShare(directory, 5) as share:
        assert share.registered and share.threads() == 5  # alone: every core
        jobs.append(first := Job(directory, 5))
        assert (share.threads(), first.threads()) == (3, 2)  # the earliest gets the remainder
        jobs.append(second := Job(directory, 5))
        assert (share.threads(), first.threads(), second.threads()) == (2, 2, 1)
        jobs.append(third := Job(directory, 5))
        assert [share.threads(), *(job.threads() for job in jobs)] == [2, 1, 1, 1]

        first.kill()
        assert registered(directory) == 4  # the dead job's file is still there, unlocked
        assert (share.threads(), second.threads(), third.threads()) == (2, 2, 1)
        assert registered(directory) == 3  # and the first probe removed it
        second.kill()
        third.kill()
        assert share.threads() == 5
    assert registered(directory) == 0  # leaving removes this job's file


def test_every_job_keeps_at_least_one_thread(tmp_path: Path, jobs: list[Job]) -> None:
    with CoreShare(tmp_path, 2) as share:
        jobs.extend(Job(tmp_path, 2) for _ in range(3))
        assert [share.threads(), *(job.threads() for job in jobs)] == [1, 1, 1, 1]


def test_a_job_that_ends_gives_its_cores_back(tmp_path: Path, jobs: list[Job]) -> None:
    with CoreShare(tmp_path, 4) as share:
        jobs.append(other := Job(tmp_path, 4))
        with CoreShare(tmp_path, 4) as mine:
            assert (share.threads(), other.threads(), mine.threads()) == (2, 1, 1)
        assert (share.threads(), other.threads()) == (2, 2)


def test_an_unusable_directory_gives_the_fallback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with CoreShare(blocker / "cores", 8, fallback=3) as share:
        assert not share.registered
        assert share.threads() == 3
    gone = tmp_path / "gone"
    with CoreShare(gone, 8, fallback=2) as share:
        assert share.threads() == 8
        for path in gone.iterdir():
            path.unlink()
        gone.rmdir()  # removed under a running job
        assert share.threads() == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_gives_the_fallback(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with CoreShare(tmp_path, 8, fallback=4) as share:
            assert not share.registered and share.threads() == 4
    finally:
        tmp_path.chmod(0o700)


def test_misuse_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cores must be at least 1"):
        CoreShare(tmp_path, 0)
    with pytest.raises(ValueError, match="fallback must be at least 1"):
        CoreShare(tmp_path, 4, fallback=0)
    share = CoreShare(tmp_path, 4)
    with pytest.raises(RuntimeError, match="inside its with block"):
        share.threads()
    with share, pytest.raises(RuntimeError, match="only once"):
        share.__enter__()
    with pytest.raises(RuntimeError, match="inside its with block"):
        share.threads()


def test_share_of_splits_cores_with_the_remainder_first() -> None:
    assert [share_of(10, 4, rank) for rank in range(4)] == [3, 3, 2, 2]
    assert [share_of(3, 5, rank) for rank in range(5)] == [1, 1, 1, 1, 1]
    assert sum(share_of(64, 7, rank) for rank in range(7)) == 64


def test_the_thread_budget_follows_lth_torch_threads(tmp_path: Path, jobs: list[Job]) -> None:
    cores = usable_cores()
    directory = host_directory(tmp_path)
    directory.mkdir(parents=True)
    jobs.append(Job(directory, cores))  # another job of this host
    with thread_budget(Settings(home=tmp_path, torch_threads=3)) as threads:
        assert threads() == 3  # fixed: no sharing
        assert registered(directory) == 1
    with thread_budget(Settings(home=tmp_path)) as threads:  # the default, 0: shared
        assert registered(directory) == 2
        assert threads() == share_of(cores, 2, 1)
        jobs[0].kill()
        assert threads() == cores
