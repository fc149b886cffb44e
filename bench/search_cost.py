"""What one lottery-ticket search costs, as ratios measured in one run against their baselines.

a. the paper's 8-round LeNet-300-100 / Fashion-MNIST experiment with its random_reinit control,
   submitted over HTTP to a real ``lth serve``, vs the same work as a plain serial PyTorch script
   (``bench.plain_script``): target <= 0.45;
b. ticket + random_reinit + random_prune over 2 rounds vs the ticket alone (engine): <= 1.5;
c. 5 replicates vs 1 (2 rounds with random_reinit, engine): <= 2.5;
d. the same spec through the service vs ``lth run``: <= 1.05.

Each pair runs back to back in this process (alternating order over ``--repeats``), so machine
noise hits both sides alike. Every spec sets ``"reuse": false``: no job reuses another's work.
The service parts also record the peak resident memory of the worker processes.

Run: ``python -m bench.search_cost [--only a,b,c,d] [--steps N] [--rounds R] [--repeats K]``.
Results: ``bench/results/search_cost.json`` (parts run earlier with other flags are kept).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from api_schemas.results import RoundResult
from api_schemas.spec import JobSpec
from bench import plain_script
from bench.common import FASHION_MNIST, RESULTS, lenet_spec, write_result
from bench.local_service import LocalService, PeakRss, bench_env
from client.sdk import Client
from worker.engine.artifacts import load_rounds
from worker.engine.data import DataConfig
from worker.engine.hooks import Progress
from worker.engine.imp import run as engine_run

PARTS = ("a", "d", "b", "c")  # the service parts first: the plain script runs before anything
TARGETS = {"a": 0.45, "b": 1.5, "c": 2.5, "d": 1.05}
FIGURES = {
    "a": "{rounds}-round LeNet-300-100 + random_reinit: service (HTTP) time / plain script time",
    "b": "ticket + random_reinit + random_prune / ticket alone (2 rounds, engine)",
    "c": "5 replicates / 1 replicate (2 rounds + random_reinit, engine)",
    "d": "same spec: service (HTTP) time / lth run time",
}
Measure = Callable[[], dict[str, Any]]


def spec_for(
    steps: int,
    rounds: int,
    controls: list[str],
    *,
    replicates: int = 1,
    eval_every: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The paper's LeNet-300-100 setup on CPU, reusing nothing of earlier jobs."""
    return lenet_spec(
        steps=steps,
        rounds=rounds,
        controls=controls,
        eval_every=eval_every,
        seed=seed,
        replicates=replicates,
    )


@dataclass
class Bench:
    """The run's settings and the service it starts on first use (shared by parts a and d)."""

    steps: int
    rounds: int
    repeats: int
    service: LocalService | None = None
    warm: bool = False
    stack: ExitStack = field(default_factory=ExitStack)

    def local_service(self) -> LocalService:
        if self.service is None:
            self.service = self.stack.enter_context(LocalService())
        return self.service

    def close(self) -> None:
        self.stack.close()
        self.service = None

    def warm_up(self) -> None:
        """One tiny engine run through every path the parts take (pruning, controls,
        replicates), so that one-off costs such as torch's lazy imports weigh on neither side."""
        if self.warm:
            return
        controls = ["random_reinit", "random_prune"]
        try:
            through_engine(spec_for(20, 1, controls, replicates=2))
        except Exception:  # an engine without replicates: part c records that itself
            through_engine(spec_for(20, 1, controls))
        self.warm = True


# ---- the ways a spec is run ------------------------------------------------------------------


def through_service(bench: Bench, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit over HTTP and wait through the SDK; the time a user waits, submit to final state."""
    service = bench.local_service()
    with Client(service.url) as client, PeakRss(service.pid) as rss:
        started = time.perf_counter()
        job = client.create_job(spec)
        job = client.wait(job.id, poll_interval=0.2)
        wall = time.perf_counter() - started
    if job.status != "succeeded":
        message = job.error.message if job.error else ""
        raise RuntimeError(f"service job {job.id} {job.status}: {message}")
    with Client(service.url) as client:
        rounds = client.rounds(job.id)
    server_s = (
        (job.finished_at - job.created_at).total_seconds() if job.finished_at is not None else None
    )
    return {
        "wall_time_s": wall,
        "server_side_s": server_s,
        "job_id": job.id,
        "worker_memory": rss.report(),
        "rounds": _accuracies(rounds),
        "_rounds": rounds,
    }


def through_lth_run(spec: dict[str, Any]) -> dict[str, Any]:
    """``lth run SPEC --out DIR`` as a subprocess, timed from start to exit."""
    lth = Path(sys.executable).parent / "lth"
    with tempfile.TemporaryDirectory(prefix="lth-bench-run-") as tmp:
        spec_path, out, log_path = Path(tmp) / "spec.json", Path(tmp) / "out", Path(tmp) / "log"
        spec_path.write_text(json.dumps(spec))
        command = [str(lth), "run", str(spec_path), "--out", str(out)]
        if not lth.exists():
            command = [sys.executable, "-m", "client", "run", str(spec_path), "--out", str(out)]
        with log_path.open("wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=log, stderr=log, env=bench_env(Path(tmp)))
            with PeakRss(process.pid, include_root=True) as rss:
                code = process.wait()
            wall = time.perf_counter() - started
        if code != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"lth run exited with {code}:\n{tail}")
        rounds = load_rounds(out)
    return {
        "wall_time_s": wall,
        "memory": rss.report(),
        "rounds": _accuracies(rounds),
        "_rounds": rounds,
    }


def through_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """``worker.engine.imp.run`` in this process, as ``lth run`` drives it."""
    job_spec = JobSpec.model_validate(spec)
    execution: list[dict[str, Any]] = []

    def on_progress(progress: Progress) -> None:
        if progress.event == "execution":
            execution.append(dict(progress.info))

    with tempfile.TemporaryDirectory(prefix="lth-bench-engine-") as out:
        started = time.perf_counter()
        summary = engine_run(
            job_spec, Path(out), DataConfig(roots=(FASHION_MNIST,)), on_progress=on_progress
        )
        wall = time.perf_counter() - started
        rounds = load_rounds(Path(out))
    return {
        "wall_time_s": wall,
        "execution": execution,  # how each round's networks trained (stacks, lanes)
        "replicates_run": summary.replicates,
        "rounds": _accuracies(rounds),
        "_rounds": rounds,
    }


def _accuracies(rounds: list[RoundResult]) -> list[dict[str, Any]]:
    return [
        {
            "round": r.round,
            "density": r.density,
            "ticket": r.ticket.accuracy,
            **{name: c.accuracy for name, c in r.controls.items()},
            **({"replicates": len(r.replicates)} if r.replicates else {}),
        }
        for r in rounds
    ]


# ---- pairing and checking --------------------------------------------------------------------


def paired(measure: Measure, baseline: Measure, repeats: int) -> tuple[list[Any], list[Any]]:
    """Both sides ``repeats`` times, back to back, the order alternating (ABBA...)."""
    measured: list[Any] = []
    baselines: list[Any] = []
    for i in range(repeats):
        if i % 2 == 0:
            baselines.append(baseline())
            measured.append(measure())
        else:
            measured.append(measure())
            baselines.append(baseline())
    return measured, baselines


def _median_time(runs: list[dict[str, Any]]) -> float:
    return statistics.median(float(r["wall_time_s"]) for r in runs)


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def _controls_problems(rounds: list[RoundResult], expected: set[str], who: str) -> list[str]:
    problems = []
    for r in rounds[1:]:
        if set(r.controls) != expected:
            problems.append(f"{who}: round {r.round} trained controls {sorted(r.controls)}")
    return problems


def _rounds_problem(rounds: list[RoundResult], total: int, who: str) -> list[str]:
    if len(rounds) != total + 1:
        return [f"{who}: {len(rounds) - 1} pruning rounds instead of {total}"]
    return []


# ---- the parts -------------------------------------------------------------------------------


def part_a(bench: Bench) -> dict[str, Any]:
    steps, rounds = bench.steps, bench.rounds
    eval_every = min(1000, steps)
    spec = spec_for(steps, rounds, ["random_reinit"], eval_every=eval_every)
    process_rss: list[float] = []

    def plain() -> dict[str, Any]:
        # One thread: at batch 60 as fast as torch's default two on a quiet 2-core machine and
        # far steadier on a busy one, so the baseline is the script at its best.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = plain_script.run(steps, rounds, eval_every, seed=0)
        finally:
            torch.set_num_threads(threads)
        process_rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return result

    services, plains = paired(lambda: through_service(bench, spec), plain, bench.repeats)
    service_s, plain_s = _median_time(services), _median_time(plains)
    problems = _rounds_problem(services[0]["_rounds"], rounds, "service")
    problems += _controls_problems(services[0]["_rounds"], {"random_reinit"}, "service")
    return {
        "ratio": service_s / plain_s,
        "times_s": {"service": service_s, "plain_script": plain_s},
        "samples_s": {
            "service": [r["wall_time_s"] for r in services],
            "plain_script": [r["wall_time_s"] for r in plains],
        },
        "worker_peak_rss_mib": services[0]["worker_memory"]["peak_rss_mib"],
        "worker_memory": services[0]["worker_memory"],
        "plain_script_process_peak_rss_mib": process_rss[0],
        "spec": spec,
        "service": [_public(r) for r in services],
        "plain_script": plains,
        "problems": problems,
    }


def part_b(bench: Bench) -> dict[str, Any]:
    bench.warm_up()
    controls = ["random_reinit", "random_prune"]
    full_spec = spec_for(bench.steps, 2, controls)
    alone_spec = spec_for(bench.steps, 2, [])
    fulls, alones = paired(
        lambda: through_engine(full_spec), lambda: through_engine(alone_spec), bench.repeats
    )
    full_s, alone_s = _median_time(fulls), _median_time(alones)
    problems = _controls_problems(fulls[0]["_rounds"], set(controls), "with controls")
    problems += _controls_problems(alones[0]["_rounds"], set(), "ticket alone")
    return {
        "ratio": full_s / alone_s,
        "times_s": {"ticket_and_controls": full_s, "ticket_alone": alone_s},
        "samples_s": {
            "ticket_and_controls": [r["wall_time_s"] for r in fulls],
            "ticket_alone": [r["wall_time_s"] for r in alones],
        },
        "execution": fulls[0]["execution"],
        "spec": full_spec,
        "baseline_spec": alone_spec,
        "problems": problems,
    }


def part_c(bench: Bench) -> dict[str, Any]:
    bench.warm_up()
    five_spec = spec_for(bench.steps, 2, ["random_reinit"], replicates=5)
    one_spec = spec_for(bench.steps, 2, ["random_reinit"])
    fives, ones = paired(
        lambda: through_engine(five_spec), lambda: through_engine(one_spec), bench.repeats
    )
    five_s, one_s = _median_time(fives), _median_time(ones)
    problems = []
    if fives[0]["replicates_run"] != 5:
        problems.append(f"the engine ran {fives[0]['replicates_run']} replicates, not 5")
    for r in fives[0]["_rounds"]:
        if len(r.replicates) != 5:
            problems.append(f"round {r.round} reports {len(r.replicates)} replicates, not 5")
    return {
        "ratio": five_s / one_s,
        "times_s": {"replicates_5": five_s, "replicates_1": one_s},
        "samples_s": {
            "replicates_5": [r["wall_time_s"] for r in fives],
            "replicates_1": [r["wall_time_s"] for r in ones],
        },
        "execution": fives[0]["execution"],
        "spec": five_spec,
        "problems": problems,
    }


def part_d(bench: Bench) -> dict[str, Any]:
    spec = spec_for(bench.steps, 2, ["random_reinit"])
    services, runs = paired(
        lambda: through_service(bench, spec), lambda: through_lth_run(spec), bench.repeats
    )
    service_s, run_s = _median_time(services), _median_time(runs)
    problems = _rounds_problem(services[0]["_rounds"], 2, "service")
    problems += _rounds_problem(runs[0]["_rounds"], 2, "lth run")
    return {
        "ratio": service_s / run_s,
        "times_s": {"service": service_s, "lth_run": run_s},
        "samples_s": {
            "service": [r["wall_time_s"] for r in services],
            "lth_run": [r["wall_time_s"] for r in runs],
        },
        "worker_peak_rss_mib": services[0]["worker_memory"]["peak_rss_mib"],
        "lth_run_peak_rss_mib": runs[0]["memory"]["peak_rss_mib"],
        "same_accuracies": services[0]["rounds"] == runs[0]["rounds"],
        "spec": spec,
        "service": [_public(r) for r in services],
        "lth_run": [_public(r) for r in runs],
        "problems": problems,
    }


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "a": part_a,
    "b": part_b,
    "c": part_c,
    "d": part_d,
}


def run_part(name: str, bench: Bench, command: str) -> dict[str, Any]:
    """One part with its figure, target and verdict; an error is recorded, not raised."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry: dict[str, Any] = {
        "figure": FIGURES[name].format(rounds=bench.rounds),
        "target": TARGETS[name],
        "comparison": "<=",
        "command": command,
        "date": started,
        "steps": bench.steps,
    }
    try:
        measured = RUNNERS[name](bench)
    except Exception as exc:
        traceback.print_exc()
        return entry | {"ratio": None, "passed": False, "error": f"{type(exc).__name__}: {exc}"}
    valid = not measured["problems"]
    passed = valid and measured["ratio"] <= TARGETS[name]
    return entry | {"passed": passed, "valid": valid} | measured


def _previous() -> dict[str, Any]:
    path = RESULTS / "search_cost.json"
    try:
        results: dict[str, Any] = json.loads(path.read_text()).get("results", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(sorted(PARTS)), help="parts, e.g. a,b")
    parser.add_argument("--steps", type=int, default=None, help="iterations a round (5000)")
    parser.add_argument("--rounds", type=int, default=8, help="pruning rounds of part a")
    parser.add_argument("--repeats", type=int, default=1, help="pairs measured per part")
    args = parser.parse_args()
    chosen = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = chosen - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(sorted(PARTS))}")
    bench = Bench(steps=args.steps or 5000, rounds=args.rounds, repeats=args.repeats)

    results = _previous()
    try:
        for name in (p for p in PARTS if p in chosen):
            flags = f" --steps {args.steps}" if args.steps else ""
            flags += f" --rounds {args.rounds}" if name == "a" and args.rounds != 8 else ""
            flags += f" --repeats {args.repeats}" if args.repeats != 1 else ""
            command = f"python -m bench.search_cost --only {name}{flags}"
            print(f"[{name}] {FIGURES[name].format(rounds=args.rounds)}", flush=True)
            results[name] = run_part(name, bench, command)
            _print(name, results[name])
    finally:
        bench.close()
    path = write_result(
        "search_cost", {"config": vars(args), "results": dict(sorted(results.items()))}
    )
    print(f"results: {path}")


def _print(name: str, entry: dict[str, Any]) -> None:
    if entry.get("ratio") is None:
        print(f"[{name}] ERROR {entry.get('error')}")
        return
    times = ", ".join(f"{k} {v:.1f} s" for k, v in entry["times_s"].items())
    verdict = "met" if entry["passed"] else "MISSED"
    if not entry.get("valid", True):
        verdict = "INVALID: " + "; ".join(entry["problems"])
    print(f"[{name}] ratio {entry['ratio']:.3f} (target <= {entry['target']}) {verdict}; {times}")
    if "worker_peak_rss_mib" in entry and entry["worker_peak_rss_mib"] is not None:
        print(f"[{name}] worker peak RSS {entry['worker_peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
