"""The trainer's HTTP API: ``create_app(settings, …)`` builds it; clients are made in the lifespan.

Requests need the database only: the dispatcher (a thread started in the lifespan) hands recorded
jobs to the broker, and ``/health`` probes with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from mlops_common.auth import TokenStore, TokenVerifier, database_source
from mlops_common.db import make_engine, migrate
from mlops_common.errors import install_error_handlers, is_database_outage
from mlops_common.limits import BodyLimit
from mlops_common.metrics import install_metrics
from mlops_common.storage import ObjectStore
from sqlalchemy import Engine

from trainer.api import router, submissions
from trainer.dispatch import Dispatcher
from trainer.handlers import JobsHandler
from trainer.health import HealthCheck
from trainer.jobs import MIGRATIONS, VERSION_TABLE, JobStore
from trainer.metrics import MonitoringGauges, TrainerMetrics
from trainer.queue import CeleryQueue, JobQueue, recover_jobs
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


async def _reap(store: JobStore, dispatcher: Dispatcher, settings: TrainerSettings) -> None:
    """Jobs whose worker vanished and never came back are requeued or failed, never left running."""
    while True:
        await asyncio.sleep(settings.stale_after_s / 3)
        try:
            await asyncio.to_thread(recover_jobs, store, settings)
        except Exception as exc:
            if is_database_outage(exc):
                log.warning("recovering stale jobs: the database is unavailable; will try again")
            else:
                log.exception("recovering stale jobs failed; will try again")
            continue
        dispatcher.wake()


def create_app(
    settings: TrainerSettings,
    *,
    engine: Engine | None = None,
    queue: JobQueue | None = None,
    objects: ObjectStore | None = None,
    run_migrations: bool = True,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db_url = settings.db.url.get_secret_value()
        if run_migrations:
            await asyncio.to_thread(migrate, db_url, MIGRATIONS, VERSION_TABLE)
        db = engine or make_engine(db_url, settings.db.pool_size)
        jobs_queue: JobQueue = queue or CeleryQueue.from_settings(settings)
        store = JobStore(db)
        dispatcher = Dispatcher(store, jobs_queue, interval_s=settings.dispatch_interval_s)
        # The gateway owns (and migrates) the token table; the trainer only reads it.
        app.state.verifier = TokenVerifier(
            database_source(TokenStore(db)), ttl_s=settings.token_cache_ttl_s
        )
        app.state.handler = JobsHandler(
            store,
            objects or ObjectStore.from_settings(settings.s3),
            notify=dispatcher.wake,
            dataset_buckets=settings.dataset_buckets,
            max_dataset_bytes=settings.max_dataset_bytes,
            max_active_jobs=settings.max_active_jobs,
            retry_after_s=settings.queue_full_retry_after_s,
        )
        app.state.health = HealthCheck(store, jobs_queue, settings.health_timeout_s)
        app.state.dispatcher = dispatcher
        gauges = MonitoringGauges(store.latest_monitoring)
        app.state.metrics.registry.register(gauges)
        # Every queued job is sent again: the broker may have lost messages while we were down.
        await asyncio.to_thread(recover_jobs, store, settings, resend_queued=True)
        dispatcher.start()
        reaper = asyncio.create_task(_reap(store, dispatcher, settings))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await asyncio.to_thread(dispatcher.stop)
            if queue is None and isinstance(jobs_queue, CeleryQueue):
                jobs_queue.close()
            app.state.metrics.registry.unregister(gauges)
            if engine is None:
                db.dispose()

    app = FastAPI(
        title="trainer",
        version=version("trainer"),
        description="Queues training jobs and reports on them; Celery workers train and register.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Added before the metrics middleware, which therefore wraps it and counts its 413s.
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, setting="TRAINER_MAX_BODY_BYTES"
    )
    app.state.metrics = TrainerMetrics(install_metrics(app, "trainer"))
    app.include_router(submissions)
    app.include_router(router)
    return app
