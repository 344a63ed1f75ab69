"""How the API hands a job to the workers: a Celery message on Redis carrying only the job id;
and how jobs whose message or worker was lost are sent again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from celery import Celery

from trainer.jobs import JobStore
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

TASK_NAME = "trainer.train_job"


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...

    def workers(self) -> list[str]: ...

    def broker_ok(self) -> bool: ...


def make_celery(settings: TrainerSettings) -> Celery:
    app = Celery("trainer", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redelivery of an unacked message after a crash; the job row decides whether it runs.
        broker_transport_options={"visibility_timeout": settings.job_time_limit_s + 600},
        worker_hijack_root_logger=False,
    )
    return app


class CeleryQueue:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def enqueue(self, job_id: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id])

    def workers(self) -> list[str]:
        replies = self.app.control.ping(timeout=1.0) or []
        return sorted(name for reply in replies for name in reply)

    def broker_ok(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception:
            return False
        return True


def recover_jobs(
    store: JobStore,
    queue: JobQueue,
    settings: TrainerSettings,
    *,
    gone: Callable[[str | None], bool] = lambda _worker: False,
    resend_queued: bool = False,
) -> None:
    """Running jobs whose worker is gone are requeued, or failed once out of attempts.

    ``gone`` recognises workers known to be gone (a restarted worker's previous run) whatever
    their heartbeat says. With ``resend_queued`` every queued job is sent again, not only the
    requeued ones: at start-up, a job may have been recorded but never sent (the API stopped in
    between). A duplicate message is harmless, since only one delivery can claim the job.
    """
    requeued, failed = store.recover_orphans(
        settings.stale_after_s, settings.max_attempts, gone=gone
    )
    for job_id in store.queued_ids() if resend_queued else requeued:
        queue.enqueue(job_id)
    if requeued or failed:
        log.warning("jobs whose worker was lost: requeued %s, failed %s", requeued, failed)
