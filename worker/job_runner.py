"""Running one job from the store: claim it, run the engine, report, finish.

The flow a task follows, whatever the broker delivers:
1. claim the job (queued → running, attempt + 1) with a compare-and-set; a duplicate delivery
   finds it running with a fresh heartbeat and does nothing; a redelivery after a crash finds the
   heartbeat stale and takes it over (attempt + 1), resuming from the engine's last checkpoint;
2. run the engine with a heartbeat thread that writes progress about once a second and reads
   the cancel flag, which the engine's stop check polls;
3. finish the job as succeeded, failed (with a code and a message the user can act on) or
   cancelled. The attempt number fences every write: a worker that lost the job writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api_schemas.jobs import EventType, JobError, JobResult
from api_schemas.jobs import Progress as JobProgress
from api_schemas.spec import JobSpec
from reports import write_report
from store import events as store_events
from store import jobs as store_jobs
from store.datasets import get_dataset
from store.models import get_model_by_uri, model_id_from_uri
from store.settings import Settings
from store.webhooks import notify_completion
from worker.handoff import sigterm_requested

log = logging.getLogger(__name__)


@dataclass
class _Shared:
    """What the training thread and the heartbeat thread exchange."""

    progress: JobProgress | None = None
    cancel: bool = False
    lost: bool = False
    released: Callable[[], bool] = field(default=lambda: False)  # its worker is stopping
    started: float = field(default_factory=time.monotonic)
    start_fraction: float | None = None
    last_beat: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rounds_logged: set[int] = field(default_factory=set)  # rounds with their event already


class JobRunner:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], worker_name: str
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker_name = worker_name

    # ---- claiming -----------------------------------------------------------------------------

    def _claim(self, job_id: str) -> store_jobs.ClaimResult:
        with self.sessions.begin() as session:
            claim = store_jobs.claim_job(session, job_id, self.worker_name)
            if claim.claimed or claim.job is None or claim.job.status != "running":
                return claim
            return store_jobs.resume_claim(
                session,
                job_id,
                self.worker_name,
                stale_after=timedelta(seconds=self.settings.stale_after_s),
                max_attempts=self.settings.max_attempts,
            )

    # ---- running ------------------------------------------------------------------------------

    def run(self, job_id: str) -> str:
        """Run ``job_id`` if this worker may; returns what happened (for logs and tests)."""
        claim = self._claim(job_id)
        if not claim.claimed or claim.job is None:
            log.info("job %s not run: %s", job_id, claim.reason)
            if claim.reason in ("cancelled", "exhausted"):  # this delivery ended the job
                notify_completion(self.sessions, job_id, self.settings)
            return claim.reason
        job = claim.job
        attempt, tenant_id = job.attempt, job.tenant_id
        spec = JobSpec.model_validate(job.spec)
        log.info("job %s: attempt %d on %s", job_id, attempt, self.worker_name)
        shared = _Shared()
        with self.sessions() as session:
            shared.rounds_logged = store_events.logged_rounds(session, job_id)
        if spec.dataset.validation_size == 0 and attempt == 1:
            message = (
                "no validation split (dataset.validation_size = 0): the early-stopping step and "
                "the winning ticket are judged on the test set"
            )
            self._event(job_id, shared, "warning", {"message": message})
        stop_heartbeat = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_loop,
            args=(job_id, attempt, shared, stop_heartbeat),
            name=f"heartbeat-{job_id}",
            daemon=True,
        )
        beat.start()
        try:
            with sigterm_requested() as shared.released:
                outcome = self._run_engine(job_id, attempt, tenant_id, spec, shared)
        finally:
            stop_heartbeat.set()
            beat.join(timeout=10)
        return outcome

    def _run_engine(
        self, job_id: str, attempt: int, tenant_id: str, spec: JobSpec, shared: _Shared
    ) -> str:
        # torch is imported here, in the task's process, never in the worker's parent.
        import torch

        from worker.cores import thread_budget
        from worker.engine.errors import EngineError, Stopped
        from worker.engine.imp import IMPRun
        from worker.engine.models import count_parameters
        from worker.training_cache import StoreTrainingCache

        cache = StoreTrainingCache(self.sessions, tenant_id, job_id, self.settings.artifact_root)
        # The job counts against the host's cores from the start: loading data and building
        # models already use threads.
        budget = contextlib.ExitStack()
        threads = budget.enter_context(thread_budget(self.settings))
        torch.set_num_threads(max(1, threads()))
        try:
            spec, model_files = self._resolve_models(tenant_id, spec)
            run = IMPRun(
                spec,
                self.settings.artifact_root / job_id,
                self._data_config(tenant_id, model_files),
                on_progress=lambda p: self._on_progress(job_id, p, shared),
                should_stop=lambda: shared.cancel or shared.lost or shared.released(),
                poll_seconds=min(self.settings.heartbeat_seconds, 1.0),
                cache=cache,
                threads=threads,
                max_parameters=self.settings.max_parameters,
            )
            self._check_limits(run, count_parameters(run.model))
            summary = run.run()
        except Stopped:
            if shared.lost:
                log.warning("job %s: attempt %d lost the job to another worker", job_id, attempt)
                return "lost"
            if shared.released() and not shared.cancel:
                self._release(job_id, attempt)
                return "released"
            self._finish(job_id, attempt, "cancelled")
            return "cancelled"
        except EngineError as exc:
            self._finish(job_id, attempt, "failed", error=JobError(code=exc.code, message=str(exc)))
            return "failed"
        except MemoryError:
            message = "the job ran out of memory; use a smaller model, batch or dataset"
            self._finish(
                job_id, attempt, "failed", error=JobError(code="out_of_memory", message=message)
            )
            return "failed"
        except Exception as exc:  # a bug or an environment failure: keep the worker alive
            if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
                message = "the GPU ran out of memory; use a smaller model or batch"
                error = JobError(code="out_of_memory", message=message)
            elif type(exc).__name__ == "SoftTimeLimitExceeded":
                limit = self.settings.job_time_limit_s
                error = JobError(code="time_limit", message=f"the job ran longer than {limit} s")
            else:
                log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
                error = JobError(
                    code="internal_error",
                    message=f"the worker failed unexpectedly ({type(exc).__name__}); "
                    "the operator's logs have the details",
                )
            self._finish(job_id, attempt, "failed", error=error)
            return "failed"
        finally:
            budget.close()  # the cores go back to the host's other jobs
        self._write_report(job_id)
        self._beat(job_id, attempt, shared)  # the final progress, before the final state
        self._finish(job_id, attempt, "succeeded", result=JobResult.from_summary(summary))
        return "succeeded"

    def _release(self, job_id: str, attempt: int) -> None:
        """Back to the queue, and sent again at once for another worker (the reconciler would
        send it later anyway)."""
        from store.queue import CeleryEnqueue
        from worker.celery_app import celery_app

        with self.sessions.begin() as session:
            released = store_jobs.release_job(
                session, job_id, attempt=attempt, reason="worker_stopping"
            )
        log.info("job %s: handed back to the queue%s", job_id, "" if released else " (lost)")
        if released:
            CeleryEnqueue(celery_app)(job_id)

    def _write_report(self, job_id: str) -> None:
        """The HTML and PNG report as artifacts; a failure here must not fail the job."""
        try:
            write_report(self.settings.artifact_root / job_id)
        except Exception as exc:
            log.warning("job %s: report not written", job_id, exc_info=True)
            with self.sessions.begin() as session:
                message = f"the report could not be drawn ({type(exc).__name__})"
                store_events.add_event(session, job_id, "warning", {"message": message})

    def _check_limits(self, run: Any, parameters: int) -> None:
        from worker.engine.errors import SpecError

        if parameters > self.settings.max_parameters:
            raise SpecError(
                f"the model has {parameters:,} parameters; this service allows at most "
                f"{self.settings.max_parameters:,}"
            )
        steps = run.lengths.total * run.trainings_total
        if steps > self.settings.max_steps_per_job:
            raise SpecError(
                f"the job would train {steps:,} iterations over all rounds and controls; this "
                f"service allows at most {self.settings.max_steps_per_job:,}"
            )

    def _resolve_models(self, tenant_id: str, spec: JobSpec) -> tuple[JobSpec, tuple[Path, ...]]:
        """``model://<id>`` in ``model.uri`` (ONNX) and ``model.weights`` (safetensors) becomes
        the tenant's file, since the engine reads paths; a path in ``model.uri`` is confined to
        the data roots as at submission. Returns the spec the engine runs and the upload files
        it may read."""
        from api_schemas.confine import PathRefusedError, confine
        from worker.engine.errors import DataError

        changes: dict[str, str] = {}
        for name, kind in (("uri", "onnx"), ("weights", "safetensors")):
            location = getattr(spec.model, name)
            if location is None or model_id_from_uri(location) is None:
                if location is not None and name == "uri":
                    excluded = [self.settings.upload_root, self.settings.model_root]
                    try:
                        confine(location, self.settings.data_roots, excluded)
                    except PathRefusedError as error:
                        raise DataError(f"model.uri: {error}") from error
                continue
            with self.sessions() as session:
                row = get_model_by_uri(session, tenant_id, location)
            if row is None or row.format != kind:  # deleted since submission
                raise DataError(f"model.{name}: {location} is not one of your {kind} uploads")
            changes[name] = row.path
        if not changes:
            return spec, ()
        model = spec.model.model_copy(update=changes)
        files = tuple(Path(path) for path in changes.values())
        return spec.model_copy(update={"model": model}), files

    def _data_config(self, tenant_id: str, model_files: tuple[Path, ...] = ()) -> Any:
        from worker.engine.data import DataConfig
        from worker.engine.errors import DataError

        def upload(dataset_id: str) -> Path:
            with self.sessions() as session:
                row = get_dataset(session, tenant_id, dataset_id)
            if row is None:  # deleted since submission, or never the tenant's
                raise DataError(f"dataset://{dataset_id} is not one of your uploaded datasets")
            return Path(row.path)

        return DataConfig(
            roots=(*self.settings.data_roots, *model_files),
            download=self.settings.allow_download,
            torchvision_root=self.settings.home / "torchvision",
            uploads=upload,
            excluded=(self.settings.upload_root,),
        )

    # ---- reporting ----------------------------------------------------------------------------

    def _on_progress(self, job_id: str, p: Any, shared: _Shared) -> None:
        """Called by the engine: keep the latest progress; log rounds, evaluations, reused
        trainings and how the trainings run."""
        if p.event == "reused":
            self._event(job_id, shared, "reuse", dict(p.info))
            return
        if p.event == "execution":
            self._event(job_id, shared, "execution", dict(p.info))
            return
        if p.event == "export":  # the ONNX file; a skipped one warns, the job still succeeds
            skipped = p.info.get("status") == "skipped"
            text = f"no model.onnx: {p.info.get('reason')}" if skipped else "wrote model.onnx"
            data = {"message": text, **p.info}
            self._event(job_id, shared, "warning" if skipped else "message", data)
            return
        with shared.lock:
            if shared.start_fraction is None:
                shared.start_fraction, shared.started = p.fraction, time.monotonic()
            done = p.fraction - shared.start_fraction
            elapsed = time.monotonic() - shared.started
            eta = elapsed * (1 - p.fraction) / done if done > 1e-6 else None
            shared.progress = JobProgress(
                round=p.round,
                rounds_total=p.rounds_total + 1,
                step=p.step,
                steps_total=p.steps_total,
                fraction=p.fraction,
                eta_seconds=eta,
                variant=p.variant,
                metrics=p.metrics,
            )
        if p.event == "round_done":
            if p.round not in shared.rounds_logged:  # a resumed attempt meets its rounds again
                shared.rounds_logged.add(p.round)
                self._event(job_id, shared, "round", {"round": p.round, **p.metrics})
        elif p.event == "eval":
            data = {"round": p.round, "variant": p.variant, "step": p.step, **p.info, **p.metrics}
            self._event(job_id, shared, "progress", data)

    def _event(self, job_id: str, shared: _Shared, kind: EventType, data: dict[str, Any]) -> None:
        """Log an event for watchers. Best effort: losing one must not fail the training, and a
        worker that lost the job to another attempt writes nothing."""
        if shared.lost:
            return
        try:
            with self.sessions.begin() as session:
                store_events.add_event(session, job_id, kind, data)
        except Exception:
            log.warning("job %s: could not record a %s event", job_id, kind, exc_info=True)

    def _heartbeat_loop(
        self, job_id: str, attempt: int, shared: _Shared, stop: threading.Event
    ) -> None:
        while not stop.wait(self.settings.heartbeat_seconds):
            self._beat(job_id, attempt, shared)

    def _beat(self, job_id: str, attempt: int, shared: _Shared) -> None:
        """Write liveness and the latest progress; learn whether to stop.

        A database hiccup must not kill the job, so a failed beat is retried at the next one;
        but a worker that cannot reach the store for as long as others wait before taking its
        job over stops (keeping its checkpoint), so two attempts never train side by side.
        """
        try:
            with shared.lock:
                progress = shared.progress
            with self.sessions.begin() as session:
                beat = store_jobs.heartbeat(session, job_id, attempt=attempt, progress=progress)
        except Exception:
            log.warning("job %s: heartbeat failed", job_id, exc_info=True)
            silent = time.monotonic() - shared.last_beat
            if silent > self.settings.stale_after_s * 0.8:
                log.error("job %s: no heartbeat for %.0f s; stopping", job_id, silent)
                shared.lost = True
            return
        shared.last_beat = time.monotonic()
        shared.lost = not beat.owned
        shared.cancel = beat.cancel_requested

    def _finish(
        self,
        job_id: str,
        attempt: int,
        status: Any,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
    ) -> None:
        with self.sessions.begin() as session:
            done = store_jobs.finish_job(
                session, job_id, status, attempt=attempt, result=result, error=error
            )
        log.info("job %s: %s%s", job_id, status, "" if done else " (already final)")
        if done:
            notify_completion(self.sessions, job_id, self.settings)
