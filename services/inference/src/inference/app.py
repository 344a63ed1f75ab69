"""The FastAPI application. Clients live for the app's lifetime and can be injected by tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version
from typing import Protocol

import httpx
from fastapi import FastAPI
from mlops_common.auth import TokenSource, TokenVerifier
from mlops_common.errors import install_error_handlers
from mlops_common.http import make_async_client
from mlops_common.metrics import install_metrics
from mlops_common.settings import S3Settings
from mlops_common.storage import ObjectStore, make_s3_client

from inference.api import router
from inference.artifacts import ArtifactSource
from inference.batching import Batcher
from inference.deps import ModelGuard
from inference.events import follow_model_events
from inference.feedback import FeedbackHandler, FeedbackRecord, feedback_batches
from inference.gateway import GatewayClient
from inference.handlers import PredictionHandler
from inference.log_writer import WriterConfig
from inference.manager import ModelManager
from inference.metrics import HoldsRows, InferenceMetrics
from inference.prediction_log import ChildWriter, PredictionLog, ThreadWriter, WriterEndpoint
from inference.request_ids import errors_carry_request_id
from inference.rollout import HOLDER, Rollout
from inference.settings import InferenceSettings
from inference.sink import ObjectWriter, RecordSink, SinkConfig
from inference.v2.routes import router as v2_router

log = logging.getLogger(__name__)

# In the cache root, which pruning never touches (models live in per-model folders).
TOKEN_SNAPSHOT = "token-verdicts.json"  # noqa: S105 - a file name, not a secret


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _guard(settings: InferenceSettings, source: TokenSource) -> ModelGuard | None:
    if not settings.auth_enabled:
        log.warning(
            "INFERENCE_AUTH_ENABLED is false: /predict, /model-info and /v2/models answer "
            "anyone who can reach port %s without a token",
            settings.port,
        )
        return None
    verifier = TokenVerifier(
        source,
        ttl_s=settings.token_cache_ttl_s,
        # Serving from the cache while the gateway is down is only useful if callers get in.
        stale_grace_s=settings.token_stale_grace_s,
        snapshot=settings.cache_dir / TOKEN_SNAPSHOT,
    )
    return ModelGuard(verifier, settings.model_name)


def _warn_if_unsigned_allowed(settings: InferenceSettings) -> None:
    if not settings.require_signed_models:
        log.warning(
            "INFERENCE_REQUIRE_SIGNED_MODELS is false: versions without the platform's "
            "signature are served, and nothing checks their files were not changed"
        )


def _sink_config(settings: InferenceSettings, prefix: str) -> SinkConfig:
    return SinkConfig(
        bucket=settings.prediction_log_bucket,
        prefix=prefix,
        instance=settings.instance_slug,
        flush_rows=settings.prediction_log_flush_rows,
        flush_interval_s=settings.prediction_log_flush_interval_s,
        max_buffered_rows=settings.prediction_log_max_buffered_rows,
        write_attempts=settings.prediction_log_write_attempts,
        retry_base_s=settings.prediction_log_retry_base_s,
    )


def _record_s3(settings: InferenceSettings) -> S3Settings:
    # The sinks retry a failed upload themselves, between flushes: boto3's own retries on top
    # would hold the writer for up to max_attempts connect timeouts per try.
    return settings.s3.model_copy(update={"max_attempts": 1})


def _sinks(
    settings: InferenceSettings, store: ObjectWriter | None, metrics: InferenceMetrics
) -> tuple[PredictionLog | None, RecordSink[FeedbackRecord]]:
    """The prediction log (None when logging is off) and the feedback's sink, not started.

    The log's writer is a process of its own (``log_writer.py``), or a thread of this one when
    ``store`` is given (tests); the feedback, a few labels a second, keeps a thread.
    """
    prediction_log: PredictionLog | None = None
    if settings.prediction_log_enabled:
        config = _sink_config(settings, "predictions")
        start_writer: Callable[[], WriterEndpoint]
        if store is None:
            start_writer = functools.partial(
                ChildWriter, WriterConfig(config, s3=_record_s3(settings))
            )
        else:
            start_writer = functools.partial(ThreadWriter, WriterConfig(config), store)
        prediction_log = PredictionLog(
            config,
            start_writer,
            on_outcome=metrics.prediction_logged,
            on_writer_exit=metrics.prediction_writer_exited,
        )
    else:
        log.info("INFERENCE_PREDICTION_LOG_ENABLED is false: predictions are not logged")
    feedback_sink: RecordSink[FeedbackRecord] = RecordSink(
        _sink_config(settings, "feedback"),
        store if store is not None else ObjectStore(make_s3_client(_record_s3(settings))),
        functools.partial(feedback_batches, settings.model_name),
        on_outcome=metrics.feedback_stored,
    )
    watched: dict[str, HoldsRows] = {"feedback": feedback_sink}
    if prediction_log is not None:
        watched["predictions"] = prediction_log
    metrics.watch_sinks(watched)
    return prediction_log, feedback_sink


def _variant_manager(
    settings: InferenceSettings,
    gateway: GatewayClient,
    store: ArtifactSource,
    metrics: InferenceMetrics,
    alias: str,
) -> ModelManager:
    return ModelManager.from_settings(
        settings, gateway, store, on_event=metrics.model_event, variant=alias
    )


def _follows_rollouts(settings: InferenceSettings) -> bool:
    if not settings.follow_rollouts:
        log.info("INFERENCE_FOLLOW_ROLLOUTS is false: every request goes to %s", HOLDER)
        return False
    if settings.model_alias != HOLDER:
        log.info(
            "serving %s@%s: rollouts (between aliases, held by %s) are not followed",
            settings.model_name,
            settings.model_alias,
            HOLDER,
        )
        return False
    return True


def _on_event(
    settings: InferenceSettings,
    manager: ModelManager,
    rollout: Rollout,
    event: dict[str, object] | None,
) -> None:
    """Route a gateway event (None: events may have been missed) to whoever it concerns."""
    if event is None or event.get("type") == "rollout":
        rollout.wake()
    if event is None or event.get("alias") == settings.model_alias:
        manager.wake()
    if event is not None and isinstance(event.get("alias"), str):
        rollout.wake_alias(str(event["alias"]))


class _Closes(Protocol):
    def close(self, timeout_s: float) -> None: ...


async def _close_sinks(sinks: Sequence[_Closes], timeout_s: float) -> None:
    """Write what every sink holds, together, within ``timeout_s``."""
    await asyncio.gather(*(asyncio.to_thread(sink.close, timeout_s) for sink in sinks))


def create_app(
    settings: InferenceSettings,
    *,
    gateway_transport: httpx.AsyncBaseTransport | None = None,
    store: ArtifactSource | None = None,
    manager: ModelManager | None = None,
    metrics: InferenceMetrics | None = None,
    record_store: ObjectWriter | None = None,
    variant_manager: Callable[[str], ModelManager] | None = None,
) -> FastAPI:
    """Build the app. An injected ``manager`` is driven by its owner (no background polling),
    who passes it the same ``metrics`` (their ``model_event``) to have its events counted; the
    rollout is then not followed either, but applied by the owner (``app.state.rollout``), with
    the managers ``variant_manager`` makes for an alias. ``record_store`` receives the
    prediction log and the feedback (default: S3)."""
    metrics = InferenceMetrics() if metrics is None else metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            token = settings.gateway_token
            client = make_async_client(
                settings.gateway_url,
                transport=gateway_transport,
                bearer_token=token.get_secret_value() if token else None,
            )
            stack.push_async_callback(client.aclose)
            gateway = GatewayClient(
                client, resolve_timeout_s=settings.gateway_timeout_s, instance=settings.instance
            )
            prediction_log, feedback_sink = _sinks(settings, record_store, metrics)
            sinks: list[PredictionLog | RecordSink[FeedbackRecord]] = [feedback_sink]
            if prediction_log is not None:
                sinks.insert(0, prediction_log)
            for sink in sinks:
                sink.start()
            # Exit callbacks run in reverse: these close after the batcher and the manager.
            stack.push_async_callback(_close_sinks, sinks, settings.shutdown_grace_s)
            app.state.guard = _guard(settings, gateway.introspect)
            active = manager
            artifacts = store if store is not None else ObjectStore.from_settings(settings.s3)
            make_variant = variant_manager or functools.partial(
                _variant_manager, settings, gateway, artifacts, metrics
            )
            if active is None:
                _warn_if_unsigned_allowed(settings)
                active = ModelManager.from_settings(
                    settings, gateway, artifacts, on_event=metrics.model_event
                )
                # The first load runs in the background too: the app answers (503) at once.
                await active.start()
                stack.push_async_callback(active.stop)
            rollout = Rollout(
                holder=active,
                gateway=gateway,
                make_manager=make_variant,
                series=metrics.variant,
                prediction_log=prediction_log,
                poll_interval_s=settings.poll_interval_s,
                mirror_queue=settings.mirror_max_queued,
                mirror_queue_bytes=settings.mirror_max_queued_bytes,
                on_mirror=metrics.mirrored,
                on_guard_trip=metrics.guard_tripped,
                follow=manager is None and _follows_rollouts(settings),
            )
            await rollout.start()
            # Before the sinks close: the mirror writes to the prediction log.
            stack.push_async_callback(rollout.stop)
            if manager is None and settings.redis_url:
                follower = asyncio.create_task(
                    follow_model_events(
                        settings.redis_url,
                        settings.alias_channel,
                        settings.model_name,
                        functools.partial(_on_event, settings, active, rollout),
                    )
                )
                stack.push_async_callback(_cancel, follower)
            app.state.manager = active
            app.state.rollout = rollout
            batcher = Batcher(
                max_size=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000,
                max_queued=settings.max_queued_requests,
                on_batch=metrics.batch_scored,
            )
            batcher.start()
            stack.push_async_callback(batcher.stop)
            app.state.handler = PredictionHandler(
                rollout,
                max_batch_rows=settings.max_batch_rows,
                batcher=batcher,
                batching=settings.batching,
                batch_threshold_s=settings.batch_auto_threshold_ms / 1000,
                max_queued_requests=settings.max_queued_requests,
                max_body_bytes=settings.max_body_bytes,
                on_overload=metrics.overloaded,
                prediction_log=prediction_log,
            )
            app.state.feedback = FeedbackHandler(
                feedback_sink,
                max_items=settings.feedback_max_items,
                max_body_bytes=settings.max_body_bytes,
            )
            metrics.watch(active)
            log.info(
                "inference serving %s@%s (gateway %s)",
                settings.model_name,
                settings.model_alias,
                settings.gateway_url,
            )
            yield

    app = FastAPI(
        title="inference",
        version=version("inference"),
        description="Serves predictions for the model behind one registry alias.",
        lifespan=lifespan,
    )
    # Open Inference Protocol clients (tritonclient among them) read errors as one string.
    install_error_handlers(app, string_error_prefixes=("/v2/", "/v2"))
    errors_carry_request_id(app)
    install_metrics(app, "inference", metrics.registry)
    app.include_router(router)
    app.include_router(v2_router)
    return app
