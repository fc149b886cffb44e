"""The lottery-ticket experiment on real data: LeNet-300-100 on Fashion-MNIST.

The paper's setup (Adam 1.2e-3, batch 60, layer-wise 20/20/10% per round, rewinding to iteration
0, 5,000 validation examples for the early-stopping iteration), 5,000 iterations a round, 8
pruning rounds, with the random-reinitialisation control, over 3 seeds run side by side (one
thread each). It reports whether the ticket at <= 21% density beats both the dense net and the
same mask randomly re-initialised, as Frankle & Carbin found on MNIST.

Run: ``python -m bench.lenet_fashion_mnist [--seeds 0 1 2] [--steps 5000it] [--rounds 8]``.
Results: ``bench/results/lenet_fashion_mnist.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.common import FASHION_MNIST, RESULTS, lenet_spec, write_result


def spec_for(seed: int, steps: str, rounds: int, eval_every: str) -> dict[str, Any]:
    spec = lenet_spec(
        steps=steps,
        rounds=rounds,
        controls=["random_reinit"],
        eval_every=eval_every,
        checkpoint_every=steps,
        seed=seed,
    )
    spec.pop("reuse")  # the engine alone: nothing to reuse from
    return spec


def run_seed(seed: int, steps: str, rounds: int, eval_every: str) -> dict[str, Any]:
    """One seed's whole IMP run in this process (one torch thread); returns its rounds."""
    import torch

    from api_schemas.spec import JobSpec
    from worker.engine.artifacts import load_rounds
    from worker.engine.data import DataConfig
    from worker.engine.imp import run

    torch.set_num_threads(1)
    spec = JobSpec.model_validate(spec_for(seed, steps, rounds, eval_every))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = run(spec, Path(out), DataConfig(roots=(FASHION_MNIST,)))
        rounds_data = load_rounds(Path(out))
    return {
        "seed": seed,
        "wall_time_s": time.perf_counter() - started,
        "summary": summary.model_dump(),
        "rounds": [
            {
                "round": r.round,
                "density": r.density,
                "ticket": _numbers(r.ticket.model_dump()),
                "random_reinit": _numbers(r.controls["random_reinit"].model_dump())
                if "random_reinit" in r.controls
                else None,
            }
            for r in rounds_data
        ],
    }


def _numbers(variant: dict[str, Any]) -> dict[str, Any]:
    curve = variant["curve"]
    return {
        "accuracy": variant["accuracy"],  # test accuracy at the early-stopping step
        "best_test_accuracy": max(p["test_accuracy"] for p in curve),
        "final_test_accuracy": variant["final_test_accuracy"],
        "early_stop_step": variant["early_stop_step"],
        "wall_time_s": variant["wall_time_s"],
    }


def aggregate(seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, round by round."""
    table = []
    for index, first in enumerate(seeds[0]["rounds"]):
        row: dict[str, Any] = {"round": first["round"], "density": first["density"]}
        for variant in ("ticket", "random_reinit"):
            if first[variant] is None:
                continue
            for metric in ("accuracy", "best_test_accuracy", "early_stop_step"):
                values = [s["rounds"][index][variant][metric] for s in seeds]
                row[f"{variant}_{metric}_mean"] = statistics.fmean(values)
                row[f"{variant}_{metric}_std"] = statistics.pstdev(values)
        table.append(row)
    return table


def verdict(table: list[dict[str, Any]], max_density: float = 0.21) -> dict[str, Any]:
    dense = table[0]["ticket_accuracy_mean"]
    sparse = [r for r in table if r["density"] <= max_density]
    return {
        "max_density": max_density,
        "dense_accuracy": dense,
        "rounds": [
            {
                "round": r["round"],
                "density": r["density"],
                "ticket": r["ticket_accuracy_mean"],
                "random_reinit": r["random_reinit_accuracy_mean"],
                "beats_dense": r["ticket_accuracy_mean"] > dense,
                "beats_random_reinit": r["ticket_accuracy_mean"] > r["random_reinit_accuracy_mean"],
            }
            for r in sparse
        ],
        "ticket_beats_both": bool(sparse)
        and all(
            r["ticket_accuracy_mean"] > max(dense, r["random_reinit_accuracy_mean"]) for r in sparse
        ),
    }


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    density = [100 * r["density"] for r in table]
    fig, (acc_ax, stop_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, color, label in (
        ("ticket", "#1f5fa8", "winning ticket (rewind to init)"),
        ("random_reinit", "#d0602c", "random reinit (same mask)"),
    ):
        rows = [
            (d, r) for d, r in zip(density, table, strict=True) if f"{variant}_accuracy_mean" in r
        ]
        xs = [d for d, _ in rows]
        for ax, metric, scale in ((acc_ax, "accuracy", 100), (stop_ax, "early_stop_step", 1)):
            ys = [r[f"{variant}_{metric}_mean"] * scale for _, r in rows]
            errs = [r[f"{variant}_{metric}_std"] * scale for _, r in rows]
            ax.errorbar(xs, ys, yerr=errs, marker="o", color=color, label=label, capsize=3)
    acc_ax.axhline(100 * table[0]["ticket_accuracy_mean"], color="#555", ls="--", label="dense")
    for ax in (acc_ax, stop_ax):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("percent of weights remaining")
        ax.set_xticks(density)
        ax.set_xticklabels([f"{d:.1f}" for d in density], rotation=45)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel("test accuracy at early stopping (%)")
    stop_ax.set_ylabel("early-stopping iteration")
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", default="5000it")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--eval-every", default="100it")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained side by side")
    args = parser.parse_args()

    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(run_seed, seed, args.steps, args.rounds, args.eval_every)
            for seed in args.seeds
        ]
        seeds = [f.result() for f in futures]
    table = aggregate(seeds)
    result = verdict(table)
    path = write_result(
        "lenet_fashion_mnist",
        {
            "config": vars(args),
            "spec": spec_for(args.seeds[0], args.steps, args.rounds, args.eval_every),
            "wall_time_s": time.perf_counter() - started,
            "verdict": result,
            "table": table,
            "seeds": seeds,
        },
    )
    plot(
        table,
        RESULTS / "lenet_fashion_mnist.png",
        f"LeNet-300-100 on Fashion-MNIST, {args.steps} a round, {len(args.seeds)} seeds",
    )
    print(f"{'round':>5} {'density':>8} {'ticket':>8} {'reinit':>8} {'stop@':>6}")
    for row in table:
        reinit = row.get("random_reinit_accuracy_mean")
        print(
            f"{row['round']:>5} {100 * row['density']:>7.2f}% "
            f"{100 * row['ticket_accuracy_mean']:>7.2f}% "
            f"{'' if reinit is None else f'{100 * reinit:.2f}%':>8} "
            f"{row['ticket_early_stop_step_mean']:>6.0f}"
        )
    print(f"ticket at <= 21% density beats dense and random reinit: {result['ticket_beats_both']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
