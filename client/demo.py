"""``lth demo``: start the service on its embedded defaults and run one real job through HTTP.

Everything lives under ``--home`` (default ``./.lth-demo``): SQLite, the embedded broker and the
artifacts. The job is the engine's minimal spec on the real Fashion-MNIST when it is installed
(Debian's ``dataset-fashion-mnist``), else on synthetic data made offline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console

from api_schemas import run_layout
from api_schemas.examples import minimal_spec
from api_schemas.jobs import Job
from client.commands.render import rounds_table
from client.sdk import Client, LthError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def demo_spec(steps: str) -> dict[str, Any]:
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        dataset = {"uri": f"idx://{FASHION_MNIST}", "validation_size": 5000}
    else:
        dataset = {
            "uri": "synthetic://?classes=10&shape=1,28,28&train=6000&test=1000&noise=1.0",
            "validation_size": 1000,
        }
    spec = minimal_spec(dataset=dataset, name="demo: LeNet-300-100", labels={"purpose": "demo"})
    spec["training"]["steps"] = steps
    return spec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(client: httpx.Client, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(f"the service exited with code {server.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"the service was not ready within {timeout:.0f} s")


@click.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".lth-demo"),
    show_default=True,
    help="LTH_HOME of the demo service (database, broker, artifacts).",
)
@click.option("--steps", default="300it", show_default=True, help="Training steps per round.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("lth-demo-output"),
    show_default=True,
    help="Where the downloaded ticket goes.",
)
def demo(home: Path, steps: str, out: Path) -> None:
    """Start the service (embedded defaults), submit a job over HTTP, watch it, download it."""
    console = Console()
    home = home.resolve()
    port = _free_port()
    env = dict(
        os.environ,
        LTH_HOME=str(home),
        LTH_AUTH="disabled",
        LTH_HOST="127.0.0.1",
        LTH_PORT=str(port),
        LTH_RECONCILE_EVERY_S="5",
    )
    for variable in ("LTH_DATABASE_URL", "LTH_BROKER_URL", "LTH_ARTIFACT_ROOT"):
        env.pop(variable, None)  # the embedded defaults, whatever the shell has set
    console.print(f"[bold]Starting the service[/] on http://127.0.0.1:{port} (LTH_HOME={home})")
    log_path = home / "demo-service.log"
    home.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "client", "serve"], env=env, stdout=log_file, stderr=log_file
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as probe:
            _wait_ready(probe, server, timeout=120)
        with Client(url) as client:
            spec = demo_spec(steps)
            console.print(f"Submitting LeNet-300-100 on [cyan]{spec['dataset']['uri']}[/]")
            job = client.create_job(spec)
            console.print(f"Job [bold]{job.id}[/] accepted; polling {job.urls['self']}")
            job = client.wait(job.id, on_progress=lambda j: console.print(f"  {_progress(j)}"))
            if job.status != "succeeded" or job.result is None:
                message = job.error.message if job.error else ""
                raise click.ClickException(f"job {job.status}: {message}")
            result = job.result
            console.print(rounds_table(client.rounds(job.id), result.ticket_round))
            target = out.resolve() / job.id
            for name in (run_layout.TICKET, run_layout.MASK, run_layout.ROUNDS):
                client.download_artifact(job.id, name, target / name)
                console.print(f"  downloaded {name} (sha256 checked)")
            console.print(
                f"[bold green]Winning ticket[/]: round {result.ticket_round} keeps "
                f"{result.ticket_density:.2%} of the weights at {result.ticket_accuracy:.2%} "
                f"accuracy (dense {result.dense_accuracy:.2%}).\n"
                f"Ticket and mask: [bold]{target}[/]"
            )
    except LthError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _progress(job: Job) -> str:
    """One line per change of the job: status, and where training stands."""
    line: str = job.status
    progress = job.progress
    if progress is not None:
        accuracy = progress.metrics.get("test_accuracy")
        line += (
            f"  round {progress.round}/{progress.rounds_total - 1}"
            f"  {progress.variant}  step {progress.step}/{progress.steps_total}"
            f"  {100 * progress.fraction:.0f}%"
            + (f"  test acc {accuracy:.2%}" if accuracy is not None else "")
        )
    return line
