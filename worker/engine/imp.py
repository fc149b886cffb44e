"""The iterative-magnitude-pruning driver: dense training, then prune → rewind → retrain rounds.

Every step is idempotent and guarded by the existence of its artifact, so calling ``run`` again on
the same directory resumes where the last call stopped (mid-round from the last checkpoint).
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn

from api_schemas.results import RoundResult, RunSummary, VariantResult
from api_schemas.spec import JobSpec
from api_schemas.steps import to_iterations
from worker.engine import masks as masking
from worker.engine.data import DataConfig, Dataset, load_dataset, resolve_path
from worker.engine.errors import SpecError
from worker.engine.hooks import Progress, ProgressFn, StopFn
from worker.engine.models import build_model, load_weights
from worker.engine.optim import Schedule, constant
from worker.engine.paths import TICKET, RunPaths
from worker.engine.pruning import (
    prune_global,
    prune_layerwise,
    prune_to_density,
    random_mask_like,
)
from worker.engine.results import summarize, winning_round
from worker.engine.seeds import derive_seed
from worker.engine.tensorio import (
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)
from worker.engine.train import TrainOutcome, TrainPlan, train

ENGINE_VERSION = "1"


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SpecError("training.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class _Lengths:
    """The spec's step strings converted to iterations for this dataset."""

    total: int
    rewind: int
    eval_every: int
    checkpoint_every: int


class IMPRun:
    """One job's run in one directory. Build it, then call ``run()``."""

    def __init__(
        self,
        spec: JobSpec,
        out_dir: Path,
        data_config: DataConfig,
        *,
        on_progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.spec = spec
        self.paths = RunPaths(Path(out_dir))
        self.data_config = data_config
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.poll_seconds = poll_seconds
        self.device = pick_device(spec.training.device)
        self._check_directory()
        self.dataset: Dataset = load_dataset(
            spec.dataset, data_config, seed=spec.seed, device=self.device
        )
        batches = self.dataset.train_batches(spec.training.batch_size, 0)
        self.lengths = self._lengths(batches.iterations_per_epoch)
        self.schedule = Schedule.from_spec(spec.training, batches.iterations_per_epoch)
        self.model = self._new_model(derive_seed(spec.seed, "init"))
        if spec.model.weights is not None:
            load_weights(self.model, self._weights_path(spec.model.weights))
        unknown = masking.unknown_exclusions(self.model, spec.pruning.exclude)
        if unknown:
            names = ", ".join(layer.key for layer in masking.prunable_layers(self.model))
            raise SpecError(f"pruning.exclude names no prunable layer: {unknown}; layers: {names}")
        self.layers = masking.prunable_layers(self.model, spec.pruning.exclude)
        if not self.layers:
            raise SpecError("every prunable layer is excluded: nothing to prune")
        self.rounds_total = 1 if spec.pruning.one_shot else spec.pruning.rounds
        self.trainings_total = spec.trainings()
        self._trainings_done = 0

    # ---- set-up -------------------------------------------------------------------------------

    def _check_directory(self) -> None:
        """Refuse to mix two different jobs in one directory; record the spec on first use."""
        if self.paths.spec.exists():
            stored = JobSpec.model_validate(read_json(self.paths.spec))
            if stored.spec_hash() != self.spec.spec_hash():
                raise SpecError(
                    f"{self.paths.root} holds a run of another spec; use an empty directory"
                )
        else:
            write_json(self.paths.spec, self.spec.model_dump(mode="json"))

    def _weights_path(self, weights: str) -> Path:
        parts = urlsplit(weights)
        path = parts.path if parts.scheme in ("file", "") else None
        if path is None:
            raise SpecError(f"model.weights must be a file path or file:// URI, not {weights!r}")
        return resolve_path(path, self.data_config.roots)

    def _lengths(self, ipe: int) -> _Lengths:
        """The spec's lengths in iterations, at ``ipe`` iterations per epoch."""
        training, pruning = self.spec.training, self.spec.pruning
        lengths = _Lengths(
            total=to_iterations(training.steps, ipe),
            rewind=to_iterations(pruning.rewind_to, ipe),
            eval_every=to_iterations(training.eval_every, ipe),
            checkpoint_every=to_iterations(training.checkpoint_every, ipe),
        )
        if lengths.rewind >= lengths.total and lengths.rewind > 0:
            raise SpecError(
                f"pruning.rewind_to ({pruning.rewind_to} = {lengths.rewind} iterations) must come "
                f"before the end of training ({training.steps} = {lengths.total} iterations)"
            )
        return lengths

    def _new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.spec.model, self.dataset.input_shape, self.dataset.num_classes).to(
            self.device
        )

    def _state(self, path: Path) -> dict[str, Tensor]:
        return load_tensors(path, self.device)

    # ---- the procedure ------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run (or resume) every round and write the job's artifacts; returns the summary."""
        if not self.paths.init.exists():
            save_tensors(self.paths.init, self.model.state_dict())
        dense = masking.dense_mask(self.model, self.spec.pruning.exclude)
        results = [self._round(0, dense)]
        stop_reason = "completed all rounds"
        for k in range(1, self.rounds_total + 1):
            reason = self._stop_reason(results)
            if reason is not None:
                stop_reason = reason
                break
            results.append(self._round(k, self._mask(k)))
        else:
            stop_reason = self._stop_reason(results) or stop_reason
        return self._finish(results, stop_reason)

    def _stop_reason(self, results: list[RoundResult]) -> str | None:
        pruning = self.spec.pruning
        last = results[-1]
        if last.round == 0:
            return None
        if pruning.target_density is not None and last.density <= pruning.target_density:
            return f"reached target density {pruning.target_density}"
        # Judged like the winning ticket: on validation accuracy when a split is held out.
        drop = results[0].ticket.selection_accuracy - last.ticket.selection_accuracy
        if pruning.max_accuracy_drop is not None and drop > pruning.max_accuracy_drop:
            limit = pruning.max_accuracy_drop
            return f"accuracy fell {drop:.4f} below the dense net's (limit {limit})"
        return None

    def _mask(self, k: int) -> dict[str, Tensor]:
        """Round k's mask: the previous ticket's smallest surviving weights removed."""
        path = self.paths.mask(k)
        if path.exists():
            return load_tensors(path)
        pruning = self.spec.pruning
        previous = load_tensors(self.paths.mask(k - 1))
        weights = load_tensors(self.paths.trained(k - 1))
        if pruning.one_shot:
            assert pruning.target_density is not None
            mask = prune_to_density(
                weights,
                previous,
                self.layers,
                pruning.target_density,
                strategy=pruning.strategy,
                rates=pruning.rates,
            )
        elif pruning.strategy == "global":
            mask = prune_global(weights, previous, pruning.rate)
        else:
            mask = prune_layerwise(weights, previous, self.layers, pruning.rates)
        save_tensors(path, mask)
        return mask

    def _base_state(self, k: int) -> dict[str, Tensor]:
        """The unmasked weights round k starts from: the initialisation for the dense round; the
        rewind point under weight rewinding; the previous round's trained ticket under
        learning-rate rewinding and fine-tuning. Controls that keep the init start here too."""
        if k == 0:
            return self._state(self.paths.init)
        if self.spec.pruning.retrain == "weight_rewind":
            return self._state(self._rewind_path())
        return self._state(self.paths.trained(k - 1))

    def _masked(self, state: dict[str, Tensor], mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return masking.apply_mask(state, {key: m.to(self.device) for key, m in mask.items()})

    def _start_state(self, k: int, mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The weights round k starts training from (the ticket itself under weight rewinding)."""
        return self._masked(self._base_state(k), mask)

    def _rewind_path(self) -> Path:
        return self.paths.rewind if self.lengths.rewind > 0 else self.paths.init

    def _plan(self, k: int) -> TrainPlan:
        training, pruning = self.spec.training, self.spec.pruning
        start = 0 if k == 0 else self.lengths.rewind
        schedule = self.schedule
        if k > 0 and pruning.retrain == "finetune":
            schedule = constant(pruning.finetune_lr or self.schedule.final_lr(), self.lengths.total)
        snapshots = (
            {self.lengths.rewind: self.paths.rewind} if k == 0 and self.lengths.rewind else {}
        )
        return TrainPlan(
            start=start,
            end=self.lengths.total,
            schedule=schedule,
            eval_every=self.lengths.eval_every,
            checkpoint_every=self.lengths.checkpoint_every,
            batch_size=training.batch_size,
            data_seed=derive_seed(self.spec.seed, "data"),
            precision=training.precision,
            snapshots=snapshots,
        )

    def _round(self, k: int, mask: dict[str, Tensor]) -> RoundResult:
        if k == 0 and not self.paths.mask(0).exists():
            save_tensors(self.paths.mask(0), mask)
        ticket = self._train_variant(k, TICKET, mask, lambda: self._start_state(k, mask))
        controls: dict[str, VariantResult] = {}
        if k > 0:
            for control in self.spec.pruning.controls:
                controls[control] = self._train_control(k, control, mask)
        result = RoundResult(
            round=k,
            density=masking.density(mask),
            remaining_weights=masking.remaining(mask),
            prunable_weights=sum(m.numel() for m in mask.values()),
            layer_density=masking.layer_density(mask),
            ticket=ticket,
            controls=controls,
        )
        self._record_round(result)
        plan = self._plan(k)
        metrics = {
            "density": result.density,
            "remaining_weights": float(result.remaining_weights),
            "accuracy": ticket.accuracy,
            "wall_time_s": ticket.wall_time_s + sum(c.wall_time_s for c in controls.values()),
            **{f"{name}_accuracy": c.accuracy for name, c in controls.items()},
        }
        self._emit(k, TICKET, plan.end, plan, metrics, event="round_done")
        return result

    def _train_control(self, k: int, control: str, mask: dict[str, Tensor]) -> VariantResult:
        if control == "random_reinit":
            # Same mask, fresh random initialisation: tests whether the init matters.
            def start() -> dict[str, Tensor]:
                fresh = self._new_model(derive_seed(self.spec.seed, "reinit", k)).state_dict()
                return self._masked(fresh, mask)

            return self._train_variant(k, control, mask, start)
        # random_prune: a random mask of the same per-layer density over the weights the ticket
        # starts from, so only the choice of survivors differs.
        path = self.paths.mask(k, control)
        if path.exists():
            random_mask = load_tensors(path)
        else:
            generator = torch.Generator().manual_seed(
                derive_seed(self.spec.seed, "random_prune", k)
            )
            random_mask = random_mask_like(mask, generator)
            save_tensors(path, random_mask)

        def start_random() -> dict[str, Tensor]:
            return self._masked(self._base_state(k), random_mask)

        return self._train_variant(k, control, random_mask, start_random)

    def _train_variant(
        self,
        k: int,
        variant: str,
        mask: dict[str, Tensor],
        start_state: Any,
    ) -> VariantResult:
        metrics_path = self.paths.metrics(k, variant)
        if metrics_path.exists():
            self._trainings_done += 1
            return VariantResult.model_validate(read_json(metrics_path))
        plan = self._plan(k)
        model = copy.deepcopy(self.model)
        model.load_state_dict(start_state())
        torch.manual_seed(derive_seed(self.spec.seed, "train", k, variant))
        checkpoint = self.paths.checkpoint(k, variant)
        outcome: TrainOutcome = train(
            model,
            self.dataset,
            self.spec.training,
            plan,
            {key: m.to(self.device) for key, m in mask.items()},
            checkpoint,
            report=self._reporter(k, variant, plan),
            should_stop=self.should_stop,
            poll_seconds=self.poll_seconds,
        )
        save_tensors(self.paths.trained(k, variant), model.state_dict())
        result = summarize(variant, outcome)
        write_json(metrics_path, result.model_dump(mode="json"))
        checkpoint.unlink(missing_ok=True)
        self._trainings_done += 1
        self._emit(k, variant, plan.end, plan, result_metrics(result), event="variant_done")
        return result

    # ---- reporting ----------------------------------------------------------------------------

    def _reporter(self, k: int, variant: str, plan: TrainPlan) -> Any:
        def report(step: int, metrics: dict[str, float] | None) -> None:
            self._emit(k, variant, step, plan, metrics or {}, event="eval" if metrics else "step")

        return report

    def _emit(
        self,
        k: int,
        variant: str,
        step: int,
        plan: TrainPlan,
        metrics: dict[str, float],
        event: str,
    ) -> None:
        if self.on_progress is None:
            return
        span = max(plan.end - plan.start, 1)
        within = min(max(step - plan.start, 0) / span, 1.0)
        done = self._trainings_done + (0.0 if event.endswith("_done") else within)
        self.on_progress(
            Progress(
                round=k,
                rounds_total=self.rounds_total,
                variant=variant,
                step=step,
                steps_total=plan.end,
                fraction=min(done / self.trainings_total, 1.0),
                metrics=metrics,
                event=event,
            )
        )

    def _record_round(self, result: RoundResult) -> None:
        """Append (or replace) the round in rounds.json so clients can read results mid-run."""
        rounds: list[dict[str, Any]] = (
            read_json(self.paths.rounds) if self.paths.rounds.exists() else []
        )
        rounds = [r for r in rounds if r["round"] != result.round] + [
            result.model_dump(mode="json")
        ]
        write_json(self.paths.rounds, sorted(rounds, key=lambda r: r["round"]))

    # ---- the job's artifacts ------------------------------------------------------------------

    def _finish(self, results: list[RoundResult], stop_reason: str) -> RunSummary:
        tolerance = self.spec.pruning.ticket_tolerance
        best = winning_round(results, tolerance)
        mask = load_tensors(self.paths.mask(best.round))
        # The lottery ticket: the weights at the rewind point with the winning mask applied.
        save_tensors(self.paths.ticket, self._masked(self._state(self._rewind_path()), mask))
        save_tensors(self.paths.final_mask, mask)
        save_tensors(self.paths.final_trained, load_tensors(self.paths.trained(best.round)))
        save_tensors(self.paths.dense, load_tensors(self.paths.trained(0)))
        summary = RunSummary(
            ticket_round=best.round,
            ticket_density=best.density,
            ticket_accuracy=best.ticket.accuracy,
            dense_accuracy=results[0].ticket.accuracy,
            rounds_completed=len(results) - 1,
            stop_reason=stop_reason,
        )
        self._write_manifest(summary)
        return summary

    def _write_manifest(self, summary: RunSummary) -> None:
        import torchvision

        artifacts = []
        for path in sorted(self.paths.root.rglob("*")):
            # Reports are drawn after the run by whoever wraps the engine; they are not its own.
            own = path.name != "manifest.json" and not path.name.startswith(("report.", "."))
            if path.is_file() and own:
                artifacts.append(
                    {
                        "name": path.relative_to(self.paths.root).as_posix(),
                        "size": path.stat().st_size,
                        "sha256": sha256_file(path),
                    }
                )
        write_json(
            self.paths.manifest,
            {
                "spec": self.spec.model_dump(mode="json"),
                "spec_hash": self.spec.spec_hash(),
                "engine_version": ENGINE_VERSION,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "torchvision": torchvision.__version__,
                },
                "device": str(self.device),
                "model": {
                    "input_shape": list(self.dataset.input_shape),
                    "num_classes": self.dataset.num_classes,
                    "prunable": [layer.key for layer in self.layers],
                },
                "dataset_fingerprint": self.dataset.fingerprint,
                "summary": summary.model_dump(mode="json"),
                "artifacts": artifacts,
            },
        )


def result_metrics(result: VariantResult) -> dict[str, float]:
    return {"accuracy": result.accuracy, "final_test_accuracy": result.final_test_accuracy}


def run(
    spec: JobSpec,
    out_dir: Path,
    data_config: DataConfig,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    poll_seconds: float = 1.0,
) -> RunSummary:
    """Run or resume the lottery-ticket procedure for ``spec``, with artifacts in ``out_dir``."""
    return IMPRun(
        spec,
        out_dir,
        data_config,
        on_progress=on_progress,
        should_stop=should_stop,
        poll_seconds=poll_seconds,
    ).run()
