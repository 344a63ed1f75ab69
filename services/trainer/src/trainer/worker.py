"""The Celery worker: takes job ids off Redis and trains them.

PostgreSQL, not the broker, holds each job's state: a message may be delivered twice (late ack
after a crash), so a job runs only for the delivery that atomically claims it. The claim and the
outcome are retried through a short database outage (``TRAINER_DB_RETRY_S``); every other
dependency is called with a timeout (MLflow ``TRAINER_MLFLOW_TIMEOUT_S``, the gateway 30 s, S3
``S3_CONNECT_TIMEOUT_S``/``S3_READ_TIMEOUT_S``, the broker ``TRAINER_BROKER_TIMEOUT_S``).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import mlflow
from celery import Celery, signals
from celery.exceptions import Reject
from mlflow.tracking import MlflowClient
from mlops_common.db import make_engine, migrate
from mlops_common.errors import is_database_outage
from mlops_common.http import make_sync_client
from mlops_common.logging import configure_logging
from mlops_common.storage import ObjectStore

from trainer.dispatch import describe, send_pending
from trainer.jobs import MIGRATIONS, VERSION_TABLE, Job, JobStore, WorkerIdentity, pid_alive
from trainer.monitor import Monitor, MonitorResult
from trainer.queue import TASK_NAME, CeleryQueue, make_celery, recover_jobs
from trainer.retry import retry_db, retry_outage
from trainer.schemas import MonitorRequest, TrainRequest
from trainer.settings import TrainerSettings
from trainer.training import JobFailed, Trainer, TrainingResult

log = logging.getLogger("trainer.worker")
R = TypeVar("R")

settings = TrainerSettings()
if settings.signing_key is None:
    # At import, so the worker does not start (rather than failing every job it takes).
    raise SystemExit(
        "TRAINER_SIGNING_KEY is not set: the worker signs every model it registers, and "
        "inference serves nothing unsigned"
    )
celery_app: Celery = make_celery(settings)


@cache
def _runtime() -> tuple[JobStore, Trainer, Monitor]:
    # Per process (the pool's too): MLflow reads these on every request; the environment wins.
    for name, value in settings.mlflow_client_env().items():
        os.environ.setdefault(name, value)
    url = settings.db.url.get_secret_value()
    migrate(url, MIGRATIONS, VERSION_TABLE)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    token = settings.gateway_token
    gateway = make_sync_client(
        settings.gateway_url,
        timeout_s=30.0,
        headers={"Authorization": f"Bearer {token.get_secret_value()}"} if token else None,
    )
    assert settings.signing_key is not None  # checked at import
    objects = ObjectStore.from_settings(settings.s3)
    client = MlflowClient(settings.mlflow.tracking_uri)
    trainer = Trainer(
        objects,
        gateway,
        client,
        settings.experiment_name,
        settings.max_dataset_rows,
        dataset_buckets=settings.dataset_buckets,
        max_dataset_bytes=settings.max_dataset_bytes,
        signing_key=settings.signing_key.get_secret_value(),
        image=settings.image,
    )
    monitor = Monitor(
        objects,
        client,
        experiment=settings.monitor_experiment,
        bucket=settings.monitor_log_bucket,
        max_rows=settings.monitor_max_rows,
        max_dataset_rows=settings.max_dataset_rows,
        dataset_buckets=settings.dataset_buckets,
        max_dataset_bytes=settings.max_dataset_bytes,
    )
    return JobStore(make_engine(url, settings.db.pool_size)), trainer, monitor


# Set when the worker's main process imports this module; its pool processes inherit them.
_WORKER_PID = os.getpid()
_INCARNATION = uuid.uuid4().hex[:8]


def _identity() -> WorkerIdentity:
    return WorkerIdentity.current(_WORKER_PID, _INCARNATION)


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    configure_logging("trainer-worker", settings.log_level, settings.log_json)


@signals.worker_ready.connect
def _recover(**_: Any) -> None:
    """A job the previous incarnation of this worker was running is retried or failed, never stuck."""
    store, _trainer, _monitor = _runtime()
    recover_jobs(
        store,
        settings,
        gone=lambda owner: _identity().knows_gone(owner, pid_alive),
        resend_queued=True,
    )
    queue = CeleryQueue.from_settings(settings, celery_app)
    try:
        sent = send_pending(store, queue)
    except Exception as exc:
        log.warning("could not send the queued jobs (%s): the API's dispatcher will", describe(exc))
    else:
        log.info("sent %d queued jobs again", len(sent))
    finally:
        queue.close()


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def train_job(job_id: str) -> str:
    store, trainer, monitor = _runtime()
    me = str(_identity())
    job = _claim(store, job_id, me)
    if job is None:
        # Already taken by another delivery, or finished: nothing to do.
        return "skipped"
    log.info("job %s: attempt %d for %s", job_id, job.attempts, job.model_name)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beat.start()
    try:
        if job.kind == "monitor":
            return _monitor(store, monitor, job, me)
        return _run(store, trainer, job, me)
    finally:
        # Only now: while an outcome waits for the database, the job must not look abandoned.
        stop.set()


def _claim(store: JobStore, job_id: str, me: str) -> Job | None:
    """The job, claimed for ``me``; None when another delivery has it. While the database is
    unavailable past ``TRAINER_DB_RETRY_S`` the message goes back to the queue (Reject)."""
    tries = 0

    def attempt() -> Job | None:
        nonlocal tries
        tries += 1
        job = store.claim(job_id, me)
        if job is None and tries > 1:
            # An earlier try may have committed before its connection broke: then it is ours.
            current = store.get(job_id)
            if current is not None and current.status == "running" and current.worker == me:
                return current
        return job

    try:
        return retry_db(attempt, budget_s=settings.db_retry_s, what=f"job {job_id}: claim")
    except Exception as exc:
        if not is_database_outage(exc):
            raise
        raise Reject(f"job {job_id}: the database is unavailable", requeue=True) from exc


def _run(store: JobStore, trainer: Trainer, job: Job, me: str) -> str:
    request = TrainRequest.model_validate(job.request)

    def done(result: TrainingResult) -> tuple[dict[str, Any], str]:
        values = {
            "run_id": result.run_id,
            "model_version": result.model_version,
            "task": result.task,
            "algorithm": result.algorithm,
            "metrics": result.metrics,
            "promoted": result.promoted,
            "promotion": result.promotion,
        }
        return values, f"{job.model_name} v{result.model_version}"

    # Rerunning is safe: a run that registered its version before failing is finished, not
    # repeated (one version per job).
    return _execute(store, job, me, lambda: trainer.run(request, job.id), done)


def _monitor(store: JobStore, monitor: Monitor, job: Job, me: str) -> str:
    request = MonitorRequest.model_validate(job.request)

    def done(result: MonitorResult) -> tuple[dict[str, Any], str]:
        values = {
            "run_id": result.run_id,
            "model_version": result.version,
            "metrics": result.metrics(),
            "result": result.as_json(),
        }
        return values, f"{job.model_name} v{result.version}, retrain {result.decision.retrain}"

    return _execute(store, job, me, lambda: monitor.run(request, job.id), done)


def _execute(
    store: JobStore,
    job: Job,
    me: str,
    work: Callable[[], R],
    done: Callable[[R], tuple[dict[str, Any], str]],
) -> str:
    """Run ``work`` through outages (``TRAINER_OUTAGE_RETRY_S``) and record its outcome: the
    job's columns ``done`` gives, or the error."""
    job_id = job.id
    try:
        result = retry_outage(work, budget_s=settings.outage_retry_s, what=f"job {job_id}")
    except JobFailed as exc:
        log.error("%s job %s failed: %s", job.kind, job_id, exc)
        return _fail(store, job_id, me, str(exc))
    except Exception as exc:
        log.exception("%s job %s failed", job.kind, job_id)
        return _fail(store, job_id, me, f"{type(exc).__name__}: {exc}")
    values, summary = done(result)
    outcome = _record(job_id, "succeeded", lambda: store.succeed(job_id, me, **values))
    if outcome == "succeeded":
        log.info("%s job %s succeeded: %s", job.kind, job_id, summary)
    return outcome


def _fail(store: JobStore, job_id: str, me: str, error: str) -> str:
    return _record(job_id, "failed", lambda: store.fail(job_id, me, error))


def _record(job_id: str, outcome: str, write: Callable[[], bool]) -> str:
    """``write()`` the outcome, retried through a database outage of up to
    ``TRAINER_DB_RETRY_S``; returns the outcome, or ``unrecorded`` when the database stayed out."""
    try:
        recorded = retry_db(write, budget_s=settings.db_retry_s, what=f"job {job_id}: {outcome}")
    except Exception as exc:
        if not is_database_outage(exc):
            raise
        log.error(
            "job %s: %s, but the database stayed unavailable: the job stays running until the "
            "stale-job recovery requeues it (the retry finishes the registered version)",
            job_id,
            outcome,
        )
        return "unrecorded"
    if not recorded:
        log.warning(
            "job %s: this attempt no longer owns the job (it was taken for lost and requeued); "
            "the attempt that owns it records the outcome",
            job_id,
        )
    return outcome


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    """Beats every ``heartbeat_interval_s``; a database outage is logged once, not every beat."""
    failing = False
    while not stop.wait(settings.heartbeat_interval_s):
        try:
            store.heartbeat(job_id)
        except Exception as exc:
            if not is_database_outage(exc):
                log.warning("job %s: heartbeat failed", job_id, exc_info=True)
            elif not failing:
                log.warning(
                    "job %s: heartbeat failed, the database is unavailable (%s); trying every "
                    "%.0f s",
                    job_id,
                    type(exc).__name__,
                    settings.heartbeat_interval_s,
                )
            failing = True
            continue
        if failing:
            log.info("job %s: heartbeat recorded again", job_id)
            failing = False
