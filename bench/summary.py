"""One table of every benchmark's figures: ``bench/results/*.json`` → ``bench/results/summary.md``.

A figure is any object in a result file holding a ``figure`` and a ``value`` (or ``ratio``), or a
``ratio`` and a ``target``, with optional ``target``, ``comparison``, ``passed`` and ``command``
(else the file's top-level ``command``); a top-level ``figures`` list, when present, is the only
place looked at. ``throughput.json`` and ``lenet_fashion_mnist.json`` are read as they are.
Missing or unreadable files become rows that say so, never errors.

Run: ``python -m bench.summary``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS

#: The benchmarks ``make bench`` (and, on a GPU machine, ``bench/gpu.sh``) produce.
EXPECTED = {
    "throughput": "python -m bench.throughput",
    "lenet_fashion_mnist": "python -m bench.lenet_fashion_mnist",
    "search_cost": "python -m bench.search_cost",
    "overheads": "python -m bench.overheads",
    "concurrency": "python -m bench.concurrency",
    "deploy_sizes": "python -m bench.deploy_sizes",
    "onnx_check": "python -m bench.onnx_check",
    "load": "python -m bench.load",
    "load-auth": "python -m bench.load --auth",
    "gpu": "bash bench/gpu.sh",
}
#: bench.throughput's targets (its JSON records only whether each was met).
THROUGHPUT_TARGETS = {
    "engine_vs_minimal": (">=", 0.9),
    "engine_vs_minimal_default_adam": (">=", 0.9),
    "engine_vs_dataloader": (">=", 3.0),
    "mask_overhead": ("<=", 0.10),
}


@dataclass(frozen=True)
class Row:
    benchmark: str
    figure: str
    value: str
    target: str
    verdict: str
    command: str


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _verdict(passed: Any) -> str:
    return "—" if passed is None else ("pass" if passed else "FAIL")


def _target(comparison: Any, target: Any) -> str:
    if target is None:
        return "—"
    return f"{comparison or ''} {_number(target)}".strip()


def throughput_rows(data: dict[str, Any]) -> Iterator[Row]:
    config = data.get("config", {})
    command = "python -m bench.throughput" + "".join(
        f" --{k} {config[k]}" for k in ("steps", "repeats", "threads") if k in config
    )
    met = data.get("targets_met", {})
    for name, value in data.get("ratios", {}).items():
        comparison, target = THROUGHPUT_TARGETS.get(name, (None, None))
        yield Row(
            "throughput",
            name,
            _number(value),
            _target(comparison, target),
            _verdict(met.get(name)),
            command,
        )


def lenet_rows(data: dict[str, Any]) -> Iterator[Row]:
    config = data.get("config", {})
    command = "python -m bench.lenet_fashion_mnist"
    if config:
        seeds = " ".join(str(s) for s in config.get("seeds", []))
        command += (
            f" --seeds {seeds} --steps {config.get('steps')} --rounds {config.get('rounds')}"
            f" --eval-every {config.get('eval_every')} --jobs {config.get('jobs')}"
        )
    verdict = data.get("verdict", {})
    dense = verdict.get("dense_accuracy")
    for r in verdict.get("rounds", []):
        yield Row(
            "lenet_fashion_mnist",
            f"round {r['round']} ({r['density']:.1%} of weights): ticket accuracy",
            f"{r['ticket']:.2%}",
            f"> dense {dense:.2%} and > random reinit {r['random_reinit']:.2%}",
            _verdict(r.get("beats_dense") and r.get("beats_random_reinit")),
            command,
        )
    if "wall_time_s" in data:
        yield Row(
            "lenet_fashion_mnist", "wall time (s)", _number(data["wall_time_s"]), "—", "—", command
        )


def figure_rows(name: str, data: Any, command: str, path: str = "") -> Iterator[Row]:
    """Every object with a ``figure`` and a ``value`` or ``ratio``, or a ``ratio`` and a
    ``target``, wherever it is nested; ``command`` where the object names none."""
    if isinstance(data, dict):
        is_figure = "figure" in data and ("value" in data or "ratio" in data)
        if is_figure or ("ratio" in data and "target" in data):
            measured = data["ratio"] if "ratio" in data else data["value"]
            value = _number(measured)
            if measured is None and data.get("error"):
                value = f"error: {str(data['error']).splitlines()[0][:120]}"
            elif data.get("valid") is False:
                value += " (invalid: " + "; ".join(map(str, data.get("problems", []))) + ")"
            yield Row(
                name,
                str(data.get("figure", path or name)),
                value,
                _target(data.get("comparison", "<="), data.get("target")),
                _verdict(data.get("passed")),
                str(data.get("command", command)),
            )
            return
        for key, value in data.items():
            yield from figure_rows(name, value, command, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from figure_rows(name, value, command, f"{path}[{index}]")


READERS: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "throughput": throughput_rows,
    "lenet_fashion_mnist": lenet_rows,
}


def rows_of(path: Path) -> list[Row]:
    name = path.stem
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        command = str(data.get("command", EXPECTED.get(name, f"python -m bench.{name}")))
        if name in READERS:
            rows = list(READERS[name](data))
        elif "figures" in data:
            rows = list(figure_rows(name, data["figures"], command))
        else:
            rows = list(
                figure_rows(name, {k: v for k, v in data.items() if k != "machine"}, command)
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [Row(name, "unreadable result", f"{type(exc).__name__}: {exc}", "—", "FAIL", "")]
    return rows or [Row(name, "no figures recognised", "—", "—", "—", EXPECTED.get(name, ""))]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: Path = RESULTS) -> str:
    files = sorted(results.glob("*.json")) if results.is_dir() else []
    rows = [row for path in files for row in rows_of(path)]
    present = {path.stem for path in files}
    rows += [
        Row(name, "no result yet", "—", "—", "—", command)
        for name, command in EXPECTED.items()
        if name not in present
    ]
    lines = [
        "# Benchmark summary",
        "",
        "| benchmark | figure | measured | target | pass/fail | command |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.benchmark, row.figure, row.value, row.target, row.verdict)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + f" | `{_cell(row.command)}` |")
    lines += ["", "Measured on:", ""]
    for path in files:
        lines.append(f"- `{path.name}`: {_machine(path)}")
    return "\n".join(lines) + "\n"


def _machine(path: Path) -> str:
    try:
        machine = json.loads(path.read_text()).get("machine", {})
        parts = [
            str(machine.get("date", "?")),
            f"{machine.get('cpu_count', '?')} CPUs",
            f"torch {machine.get('torch', '?')}",
        ]
        if machine.get("cuda"):
            parts.append(str(machine["cuda"]))
        return ", ".join(parts)
    except (OSError, ValueError, AttributeError):
        return "unknown machine"


def main() -> None:
    text = render()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "summary.md"
    path.write_text(text)
    print(text, end="")
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
