"""What the trainer API does, apart from HTTP: validate, record, report.

A recorded job is handed to the broker by ``trainer.dispatch``, never by a request: submitting
needs the database only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import cast

from mlops_common.auth import Principal
from mlops_common.datasets import BUILTIN_TASKS
from mlops_common.errors import Conflict, NotFound, TooManyRequests, Unprocessable
from mlops_common.promotion import Task
from mlops_common.storage import ObjectStore

from trainer.algorithms import ALGORITHMS, resolve_algorithm
from trainer.datasets import (
    DEFAULT_DATASET_BUCKETS,
    DEFAULT_MAX_DATASET_BYTES,
    check_dataset_bucket,
    check_target,
)
from trainer.jobs import IdempotencyConflict, Job, JobStore
from trainer.schemas import JobKind, JobStatus, JobView, MonitorRequest, TrainRequest

log = logging.getLogger(__name__)


def job_view(job: Job) -> JobView:
    return JobView(
        job_id=job.id,
        kind=cast(JobKind, job.kind),
        status=cast(JobStatus, job.status),
        model_name=job.model_name,
        attempts=job.attempts,
        worker=job.worker,
        run_id=job.run_id,
        model_version=job.model_version,
        task=job.task,
        algorithm=job.algorithm,
        metrics=job.metrics,
        promoted=job.promoted,
        promotion=job.promotion,
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


class JobsHandler:
    """``notify`` is called after a job is recorded (it wakes the dispatcher); it must not block."""

    def __init__(
        self,
        store: JobStore,
        objects: ObjectStore,
        *,
        notify: Callable[[], None] = lambda: None,
        dataset_buckets: Collection[str] = DEFAULT_DATASET_BUCKETS,
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        max_active_jobs: int = 1000,
        retry_after_s: int = 30,
    ) -> None:
        self.store = store
        self.notify = notify
        self.objects = objects
        self.dataset_buckets = frozenset(dataset_buckets)
        self.max_dataset_bytes = max_dataset_bytes
        self.max_active_jobs = max_active_jobs
        self.retry_after_s = retry_after_s

    def validate(self, request: TrainRequest) -> None:
        """Everything that can be known wrong before training starts answers 422 now."""
        known_task = request.task or (
            BUILTIN_TASKS[request.dataset.builtin] if request.dataset.builtin else None
        )
        tasks: list[Task] = [known_task] if known_task else list(ALGORITHMS)
        if request.algorithm:
            tasks = [t for t in tasks if request.algorithm in ALGORITHMS[t]]
            if not tasks:
                raise Unprocessable(
                    f"algorithm {request.algorithm!r} does not do {known_task}; use one of: "
                    + ", ".join(sorted(ALGORITHMS[known_task or "classification"])),
                    field="algorithm",
                )
        errors: list[Unprocessable] = []
        for task in tasks:
            try:
                resolve_algorithm(task, request.algorithm, request.params)
                break
            except Unprocessable as exc:
                errors.append(exc)
        else:
            raise errors[0]
        spec = request.dataset
        if spec.uri is not None and spec.target is not None:
            check_dataset_bucket(spec.uri, self.dataset_buckets)
            check_target(self.objects, spec.uri, spec.target, self.max_dataset_bytes)
        if spec.test_uri is not None and spec.target is not None:
            check_dataset_bucket(spec.test_uri, self.dataset_buckets, field="dataset.test_uri")
            check_target(self.objects, spec.test_uri, spec.target, self.max_dataset_bytes)

    def check_capacity(self, request: TrainRequest | MonitorRequest) -> None:
        """429 once the workers have ``max_active_jobs`` queued or running.

        A replayed idempotency key is let through: it creates nothing. The count and the insert
        are not atomic, so concurrent submissions may pass the bound by a few jobs.
        """
        if request.idempotency_key and self.store.by_key(request.idempotency_key):
            return
        active = self.store.active_count()
        if active >= self.max_active_jobs:
            raise TooManyRequests(
                f"{active} jobs are queued or running, the most the trainer holds "
                f"(TRAINER_MAX_ACTIVE_JOBS={self.max_active_jobs}); retry later",
                retry_after_s=self.retry_after_s,
                active=active,
                limit=self.max_active_jobs,
            )

    def submit(self, request: TrainRequest) -> tuple[JobView, bool]:
        """Validate and record a queued job: ``(job, created)``, created False for a replayed
        idempotency key.

        The job row is the outbox: the dispatcher hands it to the broker as soon as the broker
        answers, so a broker outage delays the job and never refuses it. A database outage
        raises (the error handlers answer 503).
        """
        self.validate(request)
        return self._record(request, "train")

    def submit_monitoring(self, request: MonitorRequest) -> tuple[JobView, bool]:
        """Record a monitoring job (``trainer.monitor``), like ``submit``; whether the alias
        resolves and the log holds rows is found out by the worker (the job fails, or reports
        too few rows)."""
        return self._record(request, "monitor")

    def _record(self, request: TrainRequest | MonitorRequest, kind: str) -> tuple[JobView, bool]:
        self.check_capacity(request)
        body = request.model_dump(mode="json")
        try:
            job, created = self.store.create(
                request.model_name, body, request.idempotency_key, kind
            )
        except IdempotencyConflict as exc:
            raise Conflict(
                f"idempotency_key {request.idempotency_key!r} was used for a different request "
                f"(job {exc.existing.id})",
                field="idempotency_key",
            ) from exc
        if created:
            self.notify()
            log.info("%s job %s queued for %s", kind, job.id, request.model_name)
        return job_view(job), created

    def get(self, job_id: str, principal: Principal) -> JobView:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", field="job_id")
        principal.require("jobs:read", job.model_name)
        return job_view(job)

    def list(
        self,
        model_name: str | None,
        status: str | None,
        limit: int,
        principal: Principal,
        kind: str | None = None,
    ) -> list[JobView]:
        """Only the jobs of models the token may see."""
        if model_name is not None:
            principal.require("jobs:read", model_name)
        jobs = self.store.recent(
            model_name, status, limit, model_like=principal.sql_like(), kind=kind
        )
        return [job_view(j) for j in jobs]
