"""The Celery worker: takes job ids off Redis and trains them.

PostgreSQL, not the broker, holds each job's state: a message may be delivered twice (late ack
after a crash), so a job runs only for the delivery that atomically claims it.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from functools import cache
from typing import Any

import mlflow
from celery import Celery, signals
from mlflow.tracking import MlflowClient
from mlops_common.db import make_engine, migrate
from mlops_common.http import make_sync_client
from mlops_common.logging import configure_logging
from mlops_common.storage import ObjectStore

from trainer.jobs import MIGRATIONS, VERSION_TABLE, JobStore, WorkerIdentity, pid_alive
from trainer.queue import TASK_NAME, CeleryQueue, make_celery, recover_jobs
from trainer.schemas import TrainRequest
from trainer.settings import TrainerSettings
from trainer.training import JobFailed, Trainer

log = logging.getLogger("trainer.worker")

settings = TrainerSettings()
if settings.signing_key is None:
    # At import, so the worker does not start (rather than failing every job it takes).
    raise SystemExit(
        "TRAINER_SIGNING_KEY is not set: the worker signs every model it registers, and "
        "inference serves nothing unsigned"
    )
celery_app: Celery = make_celery(settings)


@cache
def _runtime() -> tuple[JobStore, Trainer]:
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
    trainer = Trainer(
        ObjectStore.from_settings(settings.s3),
        gateway,
        MlflowClient(settings.mlflow.tracking_uri),
        settings.experiment_name,
        settings.max_dataset_rows,
        dataset_buckets=settings.dataset_buckets,
        max_dataset_bytes=settings.max_dataset_bytes,
        signing_key=settings.signing_key.get_secret_value(),
    )
    return JobStore(make_engine(url, settings.db.pool_size)), trainer


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
    store, _trainer = _runtime()
    recover_jobs(
        store,
        CeleryQueue(celery_app),
        settings,
        gone=lambda owner: _identity().knows_gone(owner, pid_alive),
        resend_queued=True,
    )


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def train_job(job_id: str) -> str:
    store, trainer = _runtime()
    me = str(_identity())
    job = store.claim(job_id, me)
    if job is None:
        # Already taken by another delivery, or finished: nothing to do.
        return "skipped"
    log.info("job %s: attempt %d for %s", job_id, job.attempts, job.model_name)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beat.start()
    try:
        result = trainer.run(TrainRequest.model_validate(job.request), job_id)
    except JobFailed as exc:
        _report(store.fail(job_id, me, str(exc)), job_id)
        log.error("job %s failed: %s", job_id, exc)
        return "failed"
    except Exception as exc:
        _report(store.fail(job_id, me, f"{type(exc).__name__}: {exc}"), job_id)
        log.exception("job %s failed", job_id)
        return "failed"
    finally:
        stop.set()
    recorded = store.succeed(
        job_id,
        me,
        run_id=result.run_id,
        model_version=result.model_version,
        task=result.task,
        algorithm=result.algorithm,
        metrics=result.metrics,
        promoted=result.promoted,
        promotion=result.promotion,
    )
    _report(recorded, job_id)
    log.info("job %s succeeded: %s v%d", job_id, job.model_name, result.model_version)
    return "succeeded"


def _report(recorded: bool, job_id: str) -> None:
    if not recorded:
        log.warning(
            "job %s: this attempt no longer owns the job (it was taken for lost and requeued); "
            "the attempt that owns it records the outcome",
            job_id,
        )


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(settings.heartbeat_interval_s):
        try:
            store.heartbeat(job_id)
        except Exception:
            log.warning("job %s: heartbeat failed", job_id, exc_info=True)
