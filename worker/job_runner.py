"""Running one job from the store: claim it, run the engine, report, finish.

The flow a task follows, whatever the broker delivers:
1. claim the job (queued → running, attempt + 1) with a compare-and-set; a duplicate delivery
   finds it running with a fresh heartbeat and does nothing; a redelivery after a crash finds the
   heartbeat stale and takes it over (attempt + 1), resuming from the engine's last checkpoint;
2. run the engine with a heartbeat thread that writes progress about once a second and reads
   the cancel flag, which the engine's stop check polls;
3. finish the job as succeeded, failed (with a code and a message the user can act on) or
   cancelled. The attempt number fences every write: a worker that lost the job writes nothing.

The engine trains in the worker's scratch folder; :class:`worker.run_publisher.RunPublisher`
fetches what the artifact store holds of the job first (a job resumed on another host) and
publishes its files while it runs and before its final state is written, so a client that sees
``succeeded`` finds every artifact in the store.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from api_schemas.jobs import EventType, JobError, JobResult
from api_schemas.jobs import Progress as JobProgress
from api_schemas.spec import JobSpec
from reports import write_report
from store import events as store_events
from store import jobs as store_jobs
from store.artifact_store import ArtifactStore, open_artifact_store
from store.datasets import get_dataset
from store.models import get_model_by_uri, model_id_from_uri
from store.settings import Settings
from store.webhooks import notify_completion
from worker.handoff import sigterm_requested
from worker.priority import restore_for_bookkeeping
from worker.run_publisher import RunPublisher

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Shared:
    """What the training thread and the heartbeat thread exchange."""

    attempt: int = 0  # the fencing token of every write it makes
    progress: JobProgress | None = None
    cancel: bool = False
    lost: bool = False
    released: Callable[[], bool] = field(default=lambda: False)  # its worker is stopping
    started: float = field(default_factory=time.monotonic)
    start_fraction: float | None = None
    last_beat: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rounds_logged: set[int] = field(default_factory=set)  # rounds with their event already
    publisher: RunPublisher | None = None
    publish_soon: bool = False  # a round finished: publish at the next heartbeat
    last_publish: float = field(default_factory=time.monotonic)


class JobRunner:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], worker_name: str
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker_name = worker_name
        self._store: ArtifactStore | None = None

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = open_artifact_store(self.settings)
        return self._store

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
        shared = _Shared(attempt=attempt)
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

        scratch = self._scratch_folder(job_id, attempt)
        publisher = RunPublisher(self.store, job_id, scratch, allowed=lambda: not shared.lost)
        cache = StoreTrainingCache(self.sessions, tenant_id, publisher)
        # The job counts against the host's cores from the start: loading data and building
        # models already use threads.
        budget = contextlib.ExitStack()
        threads = budget.enter_context(thread_budget(self.settings))
        torch.set_num_threads(max(1, threads()))
        try:
            fetched = _retrying(publisher.fetch, f"job {job_id}: could not fetch its run")
        except Exception:
            budget.close()
            self._finish(job_id, attempt, "failed", error=self._store_error())
            return "failed"
        if fetched:
            log.info("job %s: fetched %d files of its run from the store", job_id, fetched)
        shared.publisher = publisher
        try:
            models = self._uploaded_models(tenant_id, spec)
            run = IMPRun(
                spec,
                scratch,
                self._data_config(tenant_id, models),
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
                publisher.discard()
                return "lost"
            if shared.released() and not shared.cancel:
                if self._publish_final(job_id, attempt, shared, publisher) is None:
                    self._release(job_id, attempt, spec.training.device)
                return "released"
            self._publish_final(job_id, attempt, shared, publisher)
            self._finish(job_id, attempt, "cancelled")
            return "cancelled"
        except EngineError as exc:
            self._publish_final(job_id, attempt, shared, publisher)
            self._finish(job_id, attempt, "failed", error=JobError(code=exc.code, message=str(exc)))
            return "failed"
        except MemoryError:
            self._publish_final(job_id, attempt, shared, publisher)
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
            self._publish_final(job_id, attempt, shared, publisher)
            self._finish(job_id, attempt, "failed", error=error)
            return "failed"
        finally:
            budget.close()  # the cores go back to the host's other jobs
        self._write_report(job_id, scratch)
        failure = self._publish_final(job_id, attempt, shared, publisher)
        if failure is not None:
            self._finish(job_id, attempt, "failed", error=failure)
            return "failed"
        self._beat(job_id, attempt, shared)  # the final progress, before the final state
        self._finish(job_id, attempt, "succeeded", result=JobResult.from_summary(summary))
        return "succeeded"

    def _scratch_folder(self, job_id: str, attempt: int) -> Path:
        """``<scratch>/<job_id>/<attempt>``, holding the latest earlier attempt's files when one
        died on this host (renamed: a frozen attempt that wakes up finds its folder gone and
        cannot write into this one); older ones are removed. Files only the store has are
        fetched after."""
        folder = self.settings.scratch_root / job_id / str(attempt)
        earlier = sorted(
            (int(path.name), path)
            for path in folder.parent.glob("*")
            if path.name.isdigit() and int(path.name) < attempt
        )
        if earlier and not folder.exists():
            earlier.pop()[1].rename(folder)
        for _, path in earlier:
            shutil.rmtree(path, ignore_errors=True)
        return folder

    def _publish_final(
        self, job_id: str, attempt: int, shared: _Shared, publisher: RunPublisher
    ) -> JobError | None:
        """Publish the whole run before its final state (retried: a store may blink), then free
        the scratch folder. The error to fail the job with when the store stays unreachable.
        Ownership is checked first: a worker that woke up after losing the job must not publish
        (nor remove) anything of its successor's."""
        self._beat(job_id, attempt, shared)
        if shared.lost:
            return None
        try:
            _retrying(lambda: publisher.publish(final=True), f"job {job_id}: could not publish")
        except Exception:
            return self._store_error()  # the run stays in the scratch folder, for the operator
        publisher.discard()
        return None

    def _store_error(self) -> JobError:
        return JobError(
            code="artifact_store_unavailable",
            message=f"the artifact store ({self.store.url}) could not be reached or refused the "
            "run's files; the operator's logs have the details",
        )

    def _release(self, job_id: str, attempt: int, device: str) -> None:
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
            CeleryEnqueue(celery_app)(job_id, device)

    def _write_report(self, job_id: str, folder: Path) -> None:
        """The HTML and PNG report as artifacts; a failure here must not fail the job."""
        try:
            write_report(folder)
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

    def _uploaded_models(self, tenant_id: str, spec: JobSpec) -> dict[str, Path]:
        """The local, verified files of the tenant's uploads the spec names as ``model://<id>``
        (``model.uri``: ONNX, ``model.weights``: safetensors), by that location. The spec itself
        keeps ``model://<id>``: its hash, reuse keys and ``spec.json`` are the same on every
        host. A path in ``model.uri`` is confined to the data roots as at submission."""
        from api_schemas.confine import PathRefusedError, confine
        from worker.engine.errors import DataError

        files: dict[str, Path] = {}
        for name, kind in (("uri", "onnx"), ("weights", "safetensors")):
            location = getattr(spec.model, name)
            if location is None or model_id_from_uri(location) is None:
                if location is not None and name == "uri":
                    excluded = self.settings.private_roots
                    try:
                        confine(location, self.settings.data_roots, excluded)
                    except PathRefusedError as error:
                        raise DataError(f"model.uri: {error}") from error
                continue
            with self.sessions() as session:
                row = get_model_by_uri(session, tenant_id, location)
            if row is None or row.format != kind:  # deleted since submission
                raise DataError(f"model.{name}: {location} is not one of your {kind} uploads")
            files[location] = self._fetch_upload(f"model.{name}", row.path, row.sha256)
        return files

    def _data_config(self, tenant_id: str, models: dict[str, Path]) -> Any:
        from worker.engine.data import DataConfig
        from worker.engine.errors import DataError

        def upload(dataset_id: str) -> Path:
            with self.sessions() as session:
                row = get_dataset(session, tenant_id, dataset_id)
            if row is None:  # deleted since submission, or never the tenant's
                raise DataError(f"dataset://{dataset_id} is not one of your uploaded datasets")
            return self._fetch_upload(f"dataset://{dataset_id}", row.path, row.sha256)

        return DataConfig(
            roots=tuple(self.settings.data_roots),
            models=models,
            download=self.settings.allow_download,
            torchvision_root=self.settings.home / "torchvision",
            uploads=upload,
            excluded=tuple(self.settings.private_roots),
        )

    def _fetch_upload(self, what: str, location: str, sha256: str) -> Path:
        """An upload's verified local copy; a DataError the user can read when it is gone."""
        from worker.engine.errors import DataError
        from worker.upload_cache import UploadUnavailableError, cached_upload

        try:
            return cached_upload(self.store, location, sha256, self.settings.cache_root)
        except UploadUnavailableError as error:
            raise DataError(f"{what}: the uploaded file is unavailable ({error})") from error

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
            shared.publish_soon = True
            if p.round not in shared.rounds_logged:  # a resumed attempt meets its rounds again
                shared.rounds_logged.add(p.round)
                self._event(job_id, shared, "round", {"round": p.round, **p.metrics})
        elif p.event == "eval":
            data = {"round": p.round, "variant": p.variant, "step": p.step, **p.info, **p.metrics}
            self._event(job_id, shared, "progress", data)

    def _event(self, job_id: str, shared: _Shared, kind: EventType, data: dict[str, Any]) -> None:
        """Log an event for watchers. Best effort: losing one must not fail the training, and a
        worker that lost the job to another attempt writes nothing (fenced in the store too: a
        thawed worker's lanes may report before its next heartbeat learns the job is gone)."""
        if shared.lost:
            return
        try:
            with self.sessions.begin() as session:
                store_events.add_event(session, job_id, kind, data, attempt=shared.attempt)
        except Exception:
            log.warning("job %s: could not record a %s event", job_id, kind, exc_info=True)

    def _heartbeat_loop(
        self, job_id: str, attempt: int, shared: _Shared, stop: threading.Event
    ) -> None:
        restore_for_bookkeeping()  # heartbeats must not wait for idle CPU time
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
        if not shared.lost:
            self._publish_now(job_id, shared)

    def _publish_now(self, job_id: str, shared: _Shared) -> None:
        """Publish the run's new files when a round finished or the interval passed; a failure
        is retried at a later beat (the final publish is the one that must succeed)."""
        due = shared.last_publish + self.settings.artifact_sync_seconds
        if shared.publisher is None or not (shared.publish_soon or time.monotonic() >= due):
            return
        shared.publish_soon = False
        shared.last_publish = time.monotonic()
        try:
            shared.publisher.publish()
        except Exception:
            log.warning("job %s: could not publish new files", job_id, exc_info=True)

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


def _retrying(action: Callable[[], T], failure: str) -> T:
    """``action()``, tried again after 1, 2 and 4 s (a store may blink); the last error raises."""
    for delay in (1.0, 2.0, 4.0):
        try:
            return action()
        except Exception:
            log.warning("%s; trying again in %.0f s", failure, delay, exc_info=True)
            time.sleep(delay)
    return action()
