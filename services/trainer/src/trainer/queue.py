"""How a job reaches the workers: a Celery message on Redis carrying only the job id; and how jobs
whose message or worker was lost are sent again.

Every broker call is bounded by ``TRAINER_BROKER_TIMEOUT_S``: a broker that is down fails a call
at once, a frozen one (SIGSTOP, a stalled network) after the timeout, never hanging it. Requests
never call the broker: they record the job, and ``trainer.dispatch`` sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from trainer.jobs import JobStore
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

TASK_NAME = "trainer.train_job"

# One try: the dispatcher retries with backoff while the job stays pending. kombu's own retry
# reconnects twice more, each bounded by the socket timeout: 15 s instead of 5 against a frozen
# broker, for nothing (redis-py already replaces a pooled connection a restarted broker closed).
PUBLISH_RETRY_POLICY: dict[str, Any] = {"max_retries": 0}


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...

    def ping(self) -> None:
        """Return when the broker answers; raise otherwise."""
        ...

    def workers(self, timeout_s: float) -> list[str]:
        """The workers that answered a ping within ``timeout_s``."""
        ...

    def read_mark(self, key: str) -> str | None:
        """The value of a marker key on the broker (None when it holds none)."""
        ...

    def write_mark(self, key: str, value: str, ttl_s: int) -> None: ...


def broker_options(settings: TrainerSettings) -> dict[str, Any]:
    """Celery settings bounding every broker call, for the API's producer and the workers.

    kombu's redis transport passes ``socket_timeout``/``socket_connect_timeout`` to redis-py
    (unset, a read from a frozen broker never returns); ``broker_connection_timeout`` bounds the
    time spent (re)opening a connection; ``task_publish_retry_policy`` bounds a send's retries.
    ``broker_connection_max_retries`` is only the worker's reconnect loop (producers do not
    read it): its default (100, up to 30 s apart) outlasts any outage worth riding out.
    The workers' BRPOP waits 1 s (kombu's ``brpop_timeout``), well inside the read timeout.
    """
    timeout = settings.broker_timeout_s
    return {
        "broker_connection_timeout": timeout,
        "broker_transport_options": {
            # Redelivery of an unacked message after a crash; the job row decides whether it runs.
            "visibility_timeout": settings.job_time_limit_s + 600,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        },
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
    }


def make_celery(settings: TrainerSettings) -> Celery:
    app = Celery("trainer", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **broker_options(settings),
    )
    return app


def broker_client(url: str, timeout_s: float) -> redis.Redis:
    """A plain client of the broker for probes and marker keys, bounded like Celery's and without
    redis-py's own retries (up to 3, with backoff): the callers decide when to try again."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class CeleryQueue:
    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.app = app
        self.client = client

    @classmethod
    def from_settings(cls, settings: TrainerSettings, app: Celery | None = None) -> CeleryQueue:
        return cls(
            app or make_celery(settings),
            broker_client(settings.broker_url, settings.broker_timeout_s),
        )

    def enqueue(self, job_id: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], retry_policy=PUBLISH_RETRY_POLICY)

    def ping(self) -> None:
        self.client.ping()

    def workers(self, timeout_s: float) -> list[str]:
        replies = self.app.control.ping(timeout=timeout_s) or []
        return sorted(name for reply in replies for name in reply)

    def read_mark(self, key: str) -> str | None:
        value = self.client.get(key)
        return None if value is None else str(value)

    def write_mark(self, key: str, value: str, ttl_s: int) -> None:
        self.client.set(key, value, ex=ttl_s)

    def close(self) -> None:
        self.client.close()


def recover_jobs(
    store: JobStore,
    settings: TrainerSettings,
    *,
    gone: Callable[[str | None], bool] = lambda _worker: False,
    resend_queued: bool = False,
) -> None:
    """Running jobs whose worker is gone are requeued, or failed once out of attempts.

    ``gone`` recognises workers known to be gone (a restarted worker's previous run) whatever
    their heartbeat says. A requeued job is pending dispatch; with ``resend_queued`` every queued
    job is, not only the requeued ones (at start-up: the broker may have lost messages while
    nobody watched). The caller dispatches them; a duplicate message is harmless, since only one
    delivery can claim the job.
    """
    requeued, failed = store.recover_orphans(
        settings.stale_after_s, settings.max_attempts, gone=gone
    )
    if resend_queued:
        store.resend_queued()
    if requeued or failed:
        log.warning("jobs whose worker was lost: requeued %s, failed %s", requeued, failed)
