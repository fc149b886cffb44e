"""The iterative-magnitude-pruning driver: dense training, then prune → rewind → retrain rounds.

A round's networks — the ticket and each control, in every replicate (independent IMP chain) —
start from masks known once the round before is trained, so they are trained together: stacked
into one model with a leading sibling dimension (``worker.engine.stack``) where the architecture
allows, else one by one. On several cores the stacks train side by side on lanes
(``worker.engine.lanes``), and the rounds overlap: round k starts as soon as round k-1's
tickets are trained, while its controls may still train. Every training is idempotent and
guarded by the existence of its metrics, so calling ``run`` again on the same directory resumes
where the last call stopped (mid-round from the last checkpoint). With a ``TrainingCache`` a
training an earlier run already did with the same inputs is copied instead of trained.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from api_schemas.model_size import MAX_PARAMETERS
from api_schemas.results import (
    EvalPoint,
    ReplicateRound,
    RoundResult,
    RunSummary,
    VariantResult,
)
from api_schemas.run_layout import MANIFEST, ArtifactEntry, Manifest, ManifestModel, is_report
from api_schemas.spec import JobSpec
from api_schemas.steps import to_iterations
from worker.engine import forked, reuse
from worker.engine import masks as masking
from worker.engine.artifacts import save_compact
from worker.engine.data import DataConfig, Dataset, load_dataset
from worker.engine.data.uris import resolve_location
from worker.engine.errors import DivergedError, SpecError, Stopped
from worker.engine.hooks import Progress, ProgressFn, StopFn, ThreadsFn, TrainingCache
from worker.engine.lanes import LanePool, ThreadLanes, Work, split_even
from worker.engine.models import build_model, count_parameters, load_weights
from worker.engine.onnx_export import ExportResult, export_model
from worker.engine.optim import Schedule, constant
from worker.engine.paths import TICKET, RunPaths
from worker.engine.pruning import (
    prune_global,
    prune_layerwise,
    prune_to_density,
    random_mask_like,
)
from worker.engine.results import selection_accuracy, summarize, variant_stats, winning_round
from worker.engine.seeds import derive_seed, replicate_seed
from worker.engine.stack import StackedModel, stack_reason
from worker.engine.tensorio import (
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)
from worker.engine.train import ReportFn, Sibling, TrainOutcome, TrainPlan, train_siblings

ENGINE_VERSION = "3"
#: Parameters one stack may hold (weights, gradients and two optimizer moments each): bounds
#: the memory of a stacked training; more siblings than fit train in several stacks.
STACK_PARAMETER_BUDGET = 100_000_000


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


@dataclass(frozen=True)
class Chain:
    """One replicate: an independent IMP chain with its own seed and files."""

    index: int
    seed: int
    paths: RunPaths


@dataclass(frozen=True)
class _Prepared:
    """A stack (or one network) ready to train: starting weights loaded, masks, checkpoint."""

    net: nn.Module
    mask: Mapping[str, Tensor]
    siblings: list[Sibling]
    checkpoint: Path


@dataclass
class Member:
    """One training of a round: which chain, which network, its mask and starting weights."""

    chain: Chain
    round: int
    variant: str
    mask: dict[str, Tensor]
    start: Callable[[], dict[str, Tensor]]
    key: str | None = None

    @property
    def label(self) -> str:
        return f"{self.chain.index}:{self.variant}"


@dataclass(eq=False)
class _Unit:
    """A stack of round ``k`` waiting for (or training on) a lane."""

    k: int
    group: list[Member]
    plan: TrainPlan
    ready: _Prepared | None = None

    @property
    def critical(self) -> bool:
        """Holds a ticket: the next round waits for it."""
        return any(m.variant == TICKET for m in self.group)


class IMPRun:
    """One job's run in one directory. Build it, then call ``run()``.

    ``batched=False`` trains every network one by one (the reference path); ``threads`` is
    polled while training to set the CPU threads; ``cache`` offers and receives reusable
    trainings (used unless the spec says ``reuse: false``).
    """

    def __init__(
        self,
        spec: JobSpec,
        out_dir: Path,
        data_config: DataConfig,
        *,
        on_progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        poll_seconds: float = 1.0,
        batched: bool = True,
        threads: ThreadsFn | None = None,
        cache: TrainingCache | None = None,
        max_parameters: int = MAX_PARAMETERS,
    ) -> None:
        self.spec = spec
        self.max_parameters = max_parameters
        self.paths = RunPaths(Path(out_dir))
        self.data_config = data_config
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.poll_seconds = poll_seconds
        self.threads = threads
        # Without a thread budget, the process's threads as they are now: thread lanes set
        # the count to one while they train.
        self._default_cores = torch.get_num_threads()
        self.cache = cache if spec.reuse else None
        self.device = pick_device(spec.training.device)
        self._check_directory()
        self.dataset: Dataset = load_dataset(
            spec.dataset, data_config, seed=spec.seed, device=self.device
        )
        batches = self.dataset.train_batches(spec.training.batch_size, 0)
        self.lengths = self._lengths(batches.iterations_per_epoch)
        self.schedule = Schedule.from_spec(spec.training, batches.iterations_per_epoch)
        self.weights_sha256: str | None = None
        self.model = self._new_model(derive_seed(spec.seed, "init"))
        if spec.model.weights is not None:
            weights = self._weights_path(spec.model.weights)
            load_weights(self.model, weights)
            self.weights_sha256 = sha256_file(weights)
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
        self.chains = [
            Chain(r, replicate_seed(spec.seed, r), self.paths.replicate(r))
            for r in range(spec.replicates)
        ]
        reason = stack_reason(spec.model.arch, self.model)
        self.stack_reason = "batching is off" if not batched else reason
        self.max_stack = max(1, STACK_PARAMETER_BUDGET // max(count_parameters(self.model), 1))
        self.lanes_reason = self._lanes_reason()
        self._fork_lanes = False  # set per round: see _train
        self._keys: dict[int, list[str]] = {}
        self._round_seconds: dict[int, float] = {}  # training time of each round, this call
        self._round_started: dict[int, float] = {}  # when a lane first took a round's stack
        self._lock = threading.Lock()  # lanes report and count from their own threads
        self._partial: dict[int, float] = {}  # trainings done so far by each running stack
        self._fraction = 0.0  # the last fraction reported

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
        """The weights file, parsed and confined by the same function as at submission (so
        both read the same path), never in the upload area; it must exist."""
        config = self.data_config
        if weights in config.models:  # an upload the service fetched and checked
            return config.models[weights]
        return resolve_location(weights, config.roots, config.excluded, field="model.weights")

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

    def _lanes_reason(self) -> str | None:
        """Why this run's stacks cannot train side by side on one thread each (None: they can)."""
        if self.stack_reason is not None:
            return self.stack_reason
        if self.device.type != "cpu":
            return "on a GPU one stack holds every network"
        if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in self.model.modules()):
            return "the model draws random numbers while training (dropout)"
        return None

    def _new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        shape, classes = self.dataset.input_shape, self.dataset.num_classes
        spec = self.spec.model
        if spec.uri is not None and spec.uri in self.data_config.models:  # an uploaded model
            spec = spec.model_copy(update={"uri": str(self.data_config.models[spec.uri])})
        return build_model(spec, shape, classes, max_parameters=self.max_parameters).to(self.device)

    def _state(self, path: Path) -> dict[str, Tensor]:
        return load_tensors(path, self.device)

    def _init_chain(self, chain: Chain) -> None:
        """Write the chain's initial weights: its own random init, or the user's weights."""
        if chain.paths.init.exists():
            return
        if chain.index == 0 or self.spec.model.weights is not None:
            save_tensors(chain.paths.init, self.model.state_dict())
        else:
            save_tensors(
                chain.paths.init, self._new_model(derive_seed(chain.seed, "init")).state_dict()
            )

    # ---- the procedure ------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run (or resume) every round and write the job's artifacts; returns the summary."""
        for chain in self.chains:
            self._init_chain(chain)
        results = [self._round(0)]
        if self._overlap_rounds():
            return self._finish(results, self._overlapping_rounds(results))
        stop_reason = "completed all rounds"
        for k in range(1, self.rounds_total + 1):
            reason = self._stop_reason(results)
            if reason is not None:
                stop_reason = reason
                break
            results.append(self._round(k))
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
        drop = selection_accuracy(results[0]) - selection_accuracy(last)
        if pruning.max_accuracy_drop is not None and drop > pruning.max_accuracy_drop:
            limit = pruning.max_accuracy_drop
            return f"accuracy fell {drop:.4f} below the dense net's (limit {limit})"
        return None

    def _mask(self, chain: Chain, k: int) -> dict[str, Tensor]:
        """Round k's mask: the previous ticket's smallest surviving weights removed."""
        path = chain.paths.mask(k)
        if path.exists():
            return load_tensors(path)
        pruning = self.spec.pruning
        previous = load_tensors(chain.paths.mask(k - 1))
        weights = load_tensors(chain.paths.trained(k - 1))
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

    def _base_state(self, chain: Chain, k: int) -> dict[str, Tensor]:
        """The unmasked weights round k starts from: the initialisation for the dense round; the
        rewind point under weight rewinding; the previous round's trained ticket under
        learning-rate rewinding and fine-tuning. Controls that keep the init start here too."""
        if k == 0:
            return self._state(chain.paths.init)
        if self.spec.pruning.retrain == "weight_rewind":
            return self._state(self._rewind_path(chain))
        return self._state(chain.paths.trained(k - 1))

    def _masked(self, state: dict[str, Tensor], mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return masking.apply_mask(state, {key: m.to(self.device) for key, m in mask.items()})

    def _rewind_path(self, chain: Chain) -> Path:
        return chain.paths.rewind if self.lengths.rewind > 0 else chain.paths.init

    def _plan(self, k: int) -> TrainPlan:
        training, pruning = self.spec.training, self.spec.pruning
        start = 0 if k == 0 else self.lengths.rewind
        schedule = self.schedule
        if k > 0 and pruning.retrain == "finetune":
            schedule = constant(pruning.finetune_lr or self.schedule.final_lr(), self.lengths.total)
        return TrainPlan(
            start=start,
            end=self.lengths.total,
            schedule=schedule,
            eval_every=self.lengths.eval_every,
            checkpoint_every=self.lengths.checkpoint_every,
            batch_size=training.batch_size,
            data_seed=derive_seed(self.spec.seed, "data"),
            precision=training.precision,
        )

    def _snapshots(self, member: Member) -> dict[int, Path]:
        if member.round == 0 and self.lengths.rewind:
            return {self.lengths.rewind: member.chain.paths.rewind}
        return {}

    # ---- a round ------------------------------------------------------------------------------

    def _chain_key(self, chain: Chain, k: int) -> str:
        keys = self._keys.setdefault(chain.index, [])
        while len(keys) <= k:
            if not keys:
                keys.append(
                    reuse.dense_key(
                        self.spec,
                        chain_seed=chain.seed,
                        weights_sha256=self.weights_sha256,
                        dataset_fingerprint=self.dataset.fingerprint,
                        rewind_step=self.lengths.rewind,
                        engine_version=ENGINE_VERSION,
                    )
                )
            else:
                keys.append(reuse.round_key(keys[-1], self.spec, self.lengths.rewind))
        return keys[k]

    def _members(self, k: int) -> list[Member]:
        members: list[Member] = []
        for chain in self.chains:
            if k == 0:
                mask = masking.dense_mask(self.model, self.spec.pruning.exclude)
                if not chain.paths.mask(0).exists():
                    save_tensors(chain.paths.mask(0), mask)
            else:
                mask = self._mask(chain, k)
            members.append(self._ticket(chain, k, mask))
            if k > 0:
                members += [self._control(chain, k, c, mask) for c in self.spec.pruning.controls]
        for member in members:
            member.key = reuse.variant_key(self._chain_key(member.chain, k), member.variant)
        return members

    def _ticket(self, chain: Chain, k: int, mask: dict[str, Tensor]) -> Member:
        return Member(
            chain, k, TICKET, mask, lambda: self._masked(self._base_state(chain, k), mask)
        )

    def _control(self, chain: Chain, k: int, control: str, mask: dict[str, Tensor]) -> Member:
        if control == "random_reinit":
            # Same mask, fresh random initialisation: tests whether the init matters.
            def fresh() -> dict[str, Tensor]:
                model = self._new_model(derive_seed(chain.seed, "reinit", k))
                return self._masked(model.state_dict(), mask)

            return Member(chain, k, control, mask, fresh)
        # random_prune: a random mask of the same per-layer density over the weights the ticket
        # starts from, so only the choice of survivors differs.
        path = chain.paths.mask(k, control)
        if path.exists():
            random_mask = load_tensors(path)
        else:
            generator = torch.Generator().manual_seed(derive_seed(chain.seed, "random_prune", k))
            random_mask = random_mask_like(mask, generator)
            save_tensors(path, random_mask)
        return Member(
            chain,
            k,
            control,
            random_mask,
            lambda: self._masked(self._base_state(chain, k), random_mask),
        )

    def _round(self, k: int) -> RoundResult:
        members = self._members(k)
        pending = self._pending(k, members)
        if pending:
            self._train(k, pending, members)
        return self._round_result(k, members)

    def _pending(self, k: int, members: list[Member]) -> list[Member]:
        """The members still to train: neither trained by an earlier call nor reused."""
        pending = []
        for member in members:
            if member.chain.paths.metrics(k, member.variant).exists():
                self._trainings_done += 1
            elif not self._reuse(member):
                pending.append(member)
        return pending

    def _round_result(self, k: int, members: list[Member]) -> RoundResult:
        result = self._summary(k, members)
        self._record_round(result)
        stats = result.stats
        metrics = {
            "density": result.density,
            "remaining_weights": float(result.remaining_weights),
            "accuracy": stats[TICKET].accuracy_mean,
            "wall_time_s": self._round_seconds.pop(k, 0.0),
            **{f"{name}_accuracy": s.accuracy_mean for name, s in stats.items() if name != TICKET},
        }
        if len(self.chains) > 1:
            metrics["accuracy_std"] = stats[TICKET].accuracy_std
        self._emit(k, TICKET, self.lengths.total, self._plan(k), metrics, event="round_done")
        return result

    def _summary(self, k: int, members: list[Member]) -> RoundResult:
        """Round k's result from the trained members' metrics (every replicate's ticket, and
        whichever controls ``members`` holds)."""
        replicates = []
        for chain in self.chains:
            own = {m.variant: m for m in members if m.chain.index == chain.index}
            results = {
                variant: VariantResult.model_validate(read_json(chain.paths.metrics(k, variant)))
                for variant in own
            }
            mask = own[TICKET].mask
            replicates.append(
                ReplicateRound(
                    replicate=chain.index,
                    seed=chain.seed,
                    density=masking.density(mask),
                    remaining_weights=masking.remaining(mask),
                    layer_density=masking.layer_density(mask),
                    ticket=results.pop(TICKET),
                    controls=results,
                )
            )
        first = replicates[0]
        stats = {TICKET: variant_stats([r.ticket for r in replicates])}
        for control in first.controls:
            stats[control] = variant_stats([r.controls[control] for r in replicates])
        result = RoundResult(
            round=k,
            density=first.density,
            remaining_weights=first.remaining_weights,
            prunable_weights=sum(m.numel() for m in members[0].mask.values()),
            layer_density=first.layer_density,
            ticket=first.ticket,
            controls=first.controls,
            stats=stats,
            replicates=replicates if len(replicates) > 1 else [],
        )
        return result

    # ---- reuse --------------------------------------------------------------------------------

    def _files(self, member: Member) -> dict[str, Path]:
        """The files a training leaves: what another run needs to take it over."""
        paths, k, variant = member.chain.paths, member.round, member.variant
        files = {"trained": paths.trained(k, variant), "metrics": paths.metrics(k, variant)}
        if variant == "random_prune":
            files["mask"] = paths.mask(k, variant)
        if k == 0 and self.lengths.rewind:
            files["rewind"] = paths.rewind
        return files

    def _reuse(self, member: Member) -> bool:
        """Take the training from the cache when an earlier run did it; says so in an event."""
        if self.cache is None or member.key is None:
            return False
        found = self.cache.lookup(member.key)
        if found is None:
            return False
        targets = self._files(member)
        if member.variant == "random_prune":
            targets.pop("mask")  # ours is drawn from the same seed; keep it as written
        if not reuse.copy_into(found, targets):
            return False
        try:
            VariantResult.model_validate(read_json(targets["metrics"]))
        except ValueError:
            targets["metrics"].unlink(missing_ok=True)
            return False
        self._trainings_done += 1
        info: dict[str, object] = {
            "round": member.round,
            "variant": member.variant,
            "replicate": member.chain.index,
            "key": member.key,
        }
        self._emit(member.round, member.variant, 0, self._plan(member.round), {}, "reused", info)
        return True

    def _publish(self, member: Member) -> None:
        if self.cache is not None and member.key is not None:
            self.cache.publish(member.key, self._files(member))

    # ---- training -----------------------------------------------------------------------------

    def _cores(self) -> int:
        return max(1, self.threads() if self.threads is not None else self._default_cores)

    def _groups(
        self, k: int, pending: list[Member], members: list[Member], *, apart: bool = False
    ) -> tuple[list[list[Member]], int]:
        """The stacks round k trains and on how many lanes: recorded before the first training
        (one line guards it), so that a resumed round trains the same stacks the same way. A
        stack with a network still to train is trained whole; its finished networks come out
        as they were. With ``apart`` tickets and controls go to different stacks, each split
        over the lanes, so that the next round can start once the tickets are trained."""
        path = self.paths.round_plan(k)
        if not path.exists():
            stacked = self.stack_reason is None and len(pending) > 1
            lanes = 1 if self.lanes_reason is not None else min(self._cores(), len(pending))
            kinds = [pending]
            if apart:
                tickets = [m for m in pending if m.variant == TICKET]
                kinds = [tickets, [m for m in pending if m.variant != TICKET]]
            groups = [
                group
                for kind in kinds
                if kind
                for group in (
                    split_even(kind, lanes, self.max_stack) if stacked else [[m] for m in kind]
                )
            ]
            plan = {"groups": [[m.label for m in g] for g in groups], "lanes": max(lanes, 1)}
            write_json(path, plan)
        stored = read_json(path)
        by_label = {m.label: m for m in members}
        waiting = {m.label for m in pending}
        groups = [
            [by_label[label] for label in group]
            for group in stored["groups"]
            if waiting.intersection(group)
        ]
        return groups, int(stored["lanes"])

    def _execution(
        self, k: int, pending: list[Member], groups: list[list[Member]], lanes: int
    ) -> None:
        """The round's ``execution`` event: how its networks train."""
        stacked = any(len(g) > 1 for g in groups)
        info: dict[str, object] = {
            "round": k,
            "path": "batched" if stacked else "one_by_one",
            "networks": sum(len(g) for g in groups),
            "stacks": [len(g) for g in groups] if stacked else [],
            "lanes": min(lanes, len(groups)),
        }
        if lanes > 1 and len(groups) > 1:
            info["lanes_as"] = "processes" if self._fork_lanes else "threads"
        if not stacked and self.stack_reason is not None and len(pending) > 1:
            info["reason"] = self.stack_reason
        self._emit(k, TICKET, self._plan(k).start, self._plan(k), {}, "execution", info)

    def _train(self, k: int, pending: list[Member], members: list[Member]) -> None:
        groups, lanes = self._groups(k, pending, members)
        self._fork_lanes = lanes > 1 and len(groups) > 1 and forked.available()
        self._execution(k, pending, groups, lanes)
        plan = self._plan(k)
        if lanes == 1:
            for group in groups:
                self._train_group(k, group, plan, self.should_stop, self.threads)
            return
        # Every stack of a lane plan trains on one thread, however many lanes run it now.
        started = time.monotonic()
        self._on_lanes([_Unit(k, group, plan) for group in groups], lambda _unit: None)
        self._round_seconds[k] = time.monotonic() - started

    # ---- rounds that overlap ------------------------------------------------------------------

    def _overlap_rounds(self) -> bool:
        """Whether the pruned rounds overlap on lanes: with controls to train beside the tickets,
        more than one core and stacks that may train side by side, unless an earlier call
        planned a pruned round for one lane (it resumes the same way, round by round)."""
        if self.rounds_total < 1 or self.lanes_reason is not None or self._cores() < 2:
            return False
        if not self.spec.pruning.controls:
            return False  # a round's tickets wait for the round before: nothing to overlap
        plans = [self.paths.round_plan(k) for k in range(1, self.rounds_total + 1)]
        return all(int(read_json(p)["lanes"]) > 1 for p in plans if p.exists())

    def _overlapping_rounds(self, results: list[RoundResult]) -> str:
        """Rounds 1 on, each trained as soon as what it starts from exists; returns why they
        ended. Round k's masks come from round k-1's tickets alone, so round k's trainings
        start once those are trained, while round k-1's controls may still be training: the
        tickets are the critical path and go first to a free lane. Rounds are recorded in
        order, each once all its networks are trained; the stop rules read the tickets only,
        so they are applied as soon as a round's tickets are trained."""
        opened: dict[int, list[Member]] = {}
        units_left: dict[int, int] = {}
        tickets_left: dict[int, int] = {}
        queue: list[_Unit] = []
        outcome: list[str] = []
        self._fork_lanes = forked.available()

        def open_round(k: int) -> None:
            members = self._members(k)
            pending = self._pending(k, members)
            opened[k] = members
            units: list[_Unit] = []
            if pending:
                groups, lanes = self._groups(k, pending, members, apart=True)
                self._execution(k, pending, groups, lanes)
                units = [_Unit(k, group, self._plan(k)) for group in groups]
            units_left[k] = len(units)
            tickets_left[k] = sum(unit.critical for unit in units)
            queue.extend(units)
            if not tickets_left[k]:
                tickets_trained(k)

        def tickets_trained(k: int) -> None:
            tickets = [m for m in opened[k] if m.variant == TICKET]
            reason = self._stop_reason([results[0], self._summary(k, tickets)])
            if reason is None and k < self.rounds_total:
                open_round(k + 1)
            else:
                outcome.append(reason or "completed all rounds")

        def record_finished() -> None:
            k = len(results)
            while units_left.get(k) == 0:
                results.append(self._round_result(k, opened[k]))
                k += 1

        def finished(unit: _Unit) -> None:
            units_left[unit.k] -= 1
            if not units_left[unit.k]:
                self._round_seconds[unit.k] = time.monotonic() - self._round_started[unit.k]
            if unit.critical:
                tickets_left[unit.k] -= 1
                if not tickets_left[unit.k]:
                    tickets_trained(unit.k)
            record_finished()

        open_round(1)
        record_finished()
        if queue:
            self._on_lanes(queue, finished)
        return outcome[0]

    # ---- lanes --------------------------------------------------------------------------------

    def _on_lanes(self, queue: list[_Unit], finished: Callable[[_Unit], None]) -> None:
        """Train the queued stacks side by side, each on one thread, as many at once as the job
        has cores, tickets (then earlier rounds) first; ``finished(unit)`` after each, which
        may queue more. Lanes are forked processes where possible (see _fork_lanes)."""
        pool = forked.ForkedLanes if self._fork_lanes else ThreadLanes
        in_flight: dict[int, _Unit] = {}
        lanes: LanePool
        with pool(self.should_stop) as lanes:
            try:
                while True:
                    while queue and not lanes.stopping and lanes.running < self._cores():
                        unit = min(queue, key=lambda u: (not u.critical, u.k))
                        queue.remove(unit)
                        self._round_started.setdefault(unit.k, time.monotonic())
                        report = self._reporter(unit.k, unit.group, unit.plan)
                        handle = lanes.start(self._lane_work(unit), report)
                        in_flight[handle] = unit
                    if not lanes.running:
                        break
                    for handle, result in lanes.wait():
                        unit = in_flight.pop(handle)
                        outcomes = [_outcome_from_json(o) for o in result]
                        assert unit.ready is not None  # set when it started
                        checkpoint = unit.ready.checkpoint
                        self._fit_finish(unit.k, unit.group, unit.plan, outcomes, checkpoint)
                        finished(unit)
            finally:
                with self._lock:
                    for unit in in_flight.values():
                        self._partial.pop(id(unit.group), None)
            lanes.raise_errors()
        if queue:
            raise Stopped("stopped before every lane could start")

    def _lane_work(self, unit: _Unit) -> Work:
        """What a lane runs for ``unit``: prepared here (which seeds the global RNG, inherited
        by a forked lane), trained there; only the trained weights are written in the lane."""
        ready = unit.ready = self._prepare(unit.k, unit.group)

        def work(report: ReportFn, stop: StopFn) -> Any:
            outcomes = self._fit_train(unit.k, unit.group, ready, unit.plan, stop, None, report)
            return [_outcome_json(o) for o in outcomes]

        return work

    def _prepare(self, k: int, group: Sequence[Member]) -> _Prepared:
        """The network (a stack for several members) with its starting weights, its masks and
        where it checkpoints."""
        models = []
        for member in group:
            model = copy.deepcopy(self.model)
            model.load_state_dict(member.start())
            models.append(model)
        masks = [{key: m.to(self.device) for key, m in member.mask.items()} for member in group]
        siblings = [Sibling(derive_seed(m.chain.seed, "data"), self._snapshots(m)) for m in group]
        if len(group) == 1:
            member = group[0]
            torch.manual_seed(derive_seed(member.chain.seed, "train", k, member.variant))
            checkpoint = member.chain.paths.checkpoint(k, member.variant)
            return _Prepared(models[0], masks[0], siblings, checkpoint)
        stack = StackedModel.from_models(models)
        labels = [m.label for m in group]
        digest = hashlib.sha256(",".join(labels).encode()).hexdigest()[:16]
        torch.manual_seed(derive_seed(self.spec.seed, "train", k, *labels))
        return _Prepared(
            stack, stack.stacked_masks(masks), siblings, self.paths.stack_checkpoint(k, digest)
        )

    def _train_group(
        self,
        k: int,
        group: Sequence[Member],
        plan: TrainPlan,
        should_stop: StopFn | None,
        threads: ThreadsFn | None,
    ) -> None:
        seconds = self._fit(k, group, self._prepare(k, group), plan, should_stop, threads)
        self._round_seconds[k] = self._round_seconds.get(k, 0.0) + seconds

    def _fit(
        self,
        k: int,
        group: Sequence[Member],
        ready: _Prepared,
        plan: TrainPlan,
        should_stop: StopFn | None,
        threads: ThreadsFn | None,
    ) -> float:
        """Train a prepared stack and write each member's weights, metrics and events; returns
        its training time (earlier attempts included)."""
        report = self._reporter(k, group, plan)
        try:
            outcomes = self._fit_train(k, group, ready, plan, should_stop, threads, report)
        except BaseException:
            with self._lock:
                self._partial.pop(id(group), None)
            raise
        return self._fit_finish(k, group, plan, outcomes, ready.checkpoint)

    def _fit_train(
        self,
        k: int,
        group: Sequence[Member],
        ready: _Prepared,
        plan: TrainPlan,
        should_stop: StopFn | None,
        threads: ThreadsFn | None,
        report: ReportFn,
    ) -> list[TrainOutcome]:
        """Train a prepared stack and write each member's trained weights: the part a forked
        lane runs, touching nothing but the stack and its files."""
        net = ready.net
        try:
            outcomes: list[TrainOutcome] = train_siblings(
                net,
                self.dataset,
                self.spec.training,
                plan,
                ready.mask,
                ready.siblings,
                ready.checkpoint,
                report=report,
                should_stop=should_stop,
                poll_seconds=self.poll_seconds,
                threads=threads,
            )
        except DivergedError as exc:
            member = group[exc.sibling]
            where = f" in round {k}, {member.variant}"
            if len(self.chains) > 1:
                where += f" of replicate {member.chain.index}"
            raise DivergedError(exc.step, exc.sibling, where) from None
        for index, member in enumerate(group):
            state = net.sibling_state(index) if isinstance(net, StackedModel) else net.state_dict()
            save_tensors(member.chain.paths.trained(k, member.variant), state)
        return outcomes

    def _fit_finish(
        self,
        k: int,
        group: Sequence[Member],
        plan: TrainPlan,
        outcomes: list[TrainOutcome],
        checkpoint: Path,
    ) -> float:
        """Each trained member's metrics, offer to the cache and events; returns the stack's
        training time (earlier attempts included)."""
        results = []
        for member, outcome in zip(group, outcomes, strict=True):
            results.append(summarize(member.variant, outcome))
            write_json(
                member.chain.paths.metrics(k, member.variant), results[-1].model_dump(mode="json")
            )
            self._publish(member)
        with self._lock:  # the stack's share of the progress turns into finished trainings
            self._partial.pop(id(group), None)
            self._trainings_done += len(group)
        for member, result in zip(group, results, strict=True):
            self._emit(k, member.variant, plan.end, plan, result_metrics(result), "variant_done")
        checkpoint.unlink(missing_ok=True)
        return outcomes[0].wall_time_s

    # ---- reporting ----------------------------------------------------------------------------

    def _reporter(self, k: int, group: Sequence[Member], plan: TrainPlan) -> Any:
        width = len(group)

        def report(step: int, metrics: list[dict[str, float]] | None) -> None:
            span = max(plan.end - plan.start, 1)
            with self._lock:
                self._partial[id(group)] = width * min(max(step - plan.start, 0) / span, 1.0)
            if metrics is None:
                self._emit(k, group[0].variant, step, plan, {}, "step")
                return
            for member, values in zip(group, metrics, strict=True):
                info: dict[str, object] = {"replicate": member.chain.index}
                self._emit(k, member.variant, step, plan, values, "eval", info)

        return report

    def _emit(
        self,
        k: int,
        variant: str,
        step: int,
        plan: TrainPlan,
        metrics: dict[str, float],
        event: str,
        info: dict[str, object] | None = None,
    ) -> None:
        if self.on_progress is None:
            return
        with self._lock:
            done = self._trainings_done + sum(self._partial.values())
            # Lanes' shares are summed in whatever order they finished: never let an ulp of
            # rounding make the fraction step back.
            fraction = max(self._fraction, min(done / self.trainings_total, 1.0))
            self._fraction = fraction
        self.on_progress(
            Progress(
                round=k,
                rounds_total=self.rounds_total,
                variant=variant,
                step=step,
                steps_total=plan.end,
                fraction=fraction,
                metrics=metrics,
                event=event,
                info=info or {},
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
        for chain in self.chains:
            paths = chain.paths
            mask = load_tensors(paths.mask(best.round))
            # The lottery ticket: the weights at the rewind point with the winning mask applied.
            save_tensors(paths.ticket, self._masked(self._state(self._rewind_path(chain)), mask))
            save_tensors(paths.final_mask, mask)
            save_tensors(paths.final_trained, load_tensors(paths.trained(best.round)))
            save_tensors(paths.dense, load_tensors(paths.trained(0)))
            save_compact(paths, mask)

        # The run's own trained sparse model for inference outside PyTorch; never fails the run.
        def exported() -> dict[str, object]:
            return export_model(
                self.model,
                load_tensors(self.paths.final_trained),
                self.dataset.input_shape,
                self.paths.onnx,
                metadata={"arch": self.spec.model.arch},
            ).to_json()

        # In a child: the exporter leaves the process unable to fork lanes for later runs.
        export = ExportResult.from_json(forked.call_in_child(exported))
        plan = self._plan(best.round)
        self._emit(best.round, TICKET, plan.end, plan, {}, "export", export.info())
        ticket, dense = best.stats[TICKET], results[0].stats[TICKET]
        summary = RunSummary(
            ticket_round=best.round,
            ticket_density=best.density,
            ticket_accuracy=ticket.accuracy_mean,
            dense_accuracy=dense.accuracy_mean,
            ticket_accuracy_std=ticket.accuracy_std,
            dense_accuracy_std=dense.accuracy_std,
            replicates=len(self.chains),
            rounds_completed=len(results) - 1,
            stop_reason=stop_reason,
        )
        self._write_manifest(summary)
        return summary

    def _write_manifest(self, summary: RunSummary) -> None:
        import torchvision

        artifacts = []
        for path in sorted(self.paths.root.rglob("*")):
            name = path.relative_to(self.paths.root).as_posix()
            # Reports are drawn after the run by whoever wraps the engine; they are not its own.
            own = name != MANIFEST and not is_report(name) and not path.name.startswith(".")
            if path.is_file() and own:
                artifacts.append(
                    ArtifactEntry(name=name, size=path.stat().st_size, sha256=sha256_file(path))
                )
        manifest = Manifest(
            spec=self.spec.model_dump(mode="json"),
            spec_hash=self.spec.spec_hash(),
            engine_version=ENGINE_VERSION,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            versions={
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
            },
            device=str(self.device),
            model=ManifestModel(
                input_shape=list(self.dataset.input_shape),
                num_classes=self.dataset.num_classes,
                prunable=[layer.key for layer in self.layers],
            ),
            dataset_fingerprint=self.dataset.fingerprint,
            summary=summary,
            artifacts=artifacts,
        )
        write_json(self.paths.manifest, manifest.model_dump(mode="json"))


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
    batched: bool = True,
    threads: ThreadsFn | None = None,
    cache: TrainingCache | None = None,
) -> RunSummary:
    """Run or resume the lottery-ticket procedure for ``spec``, with artifacts in ``out_dir``."""
    return IMPRun(
        spec,
        out_dir,
        data_config,
        on_progress=on_progress,
        should_stop=should_stop,
        poll_seconds=poll_seconds,
        batched=batched,
        threads=threads,
        cache=cache,
    ).run()


def _outcome_json(outcome: TrainOutcome) -> dict[str, Any]:
    """A training's outcome as JSON, as a forked lane sends it back."""
    curve = [point.model_dump(mode="json") for point in outcome.curve]
    return {"curve": curve, "wall_time_s": outcome.wall_time_s, "steps": outcome.steps}


def _outcome_from_json(data: dict[str, Any]) -> TrainOutcome:
    curve = [EvalPoint.model_validate(point) for point in data["curve"]]
    return TrainOutcome(curve=curve, wall_time_s=data["wall_time_s"], steps=data["steps"])
