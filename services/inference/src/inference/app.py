"""The FastAPI application. Clients live for the app's lifetime and can be injected by tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version

import httpx
from fastapi import FastAPI
from mlops_common.errors import install_error_handlers
from mlops_common.http import make_async_client
from mlops_common.storage import ObjectStore

from inference.api import router
from inference.batching import Batcher
from inference.gateway import GatewayClient
from inference.handler import PredictionHandler
from inference.manager import ArtifactStore, ModelManager
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def create_app(
    settings: InferenceSettings,
    *,
    gateway_transport: httpx.AsyncBaseTransport | None = None,
    store: ArtifactStore | None = None,
    manager: ModelManager | None = None,
) -> FastAPI:
    """Build the app. An injected ``manager`` is driven by its owner (no background polling)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            active = manager
            if active is None:
                client = make_async_client(settings.gateway_url, transport=gateway_transport)
                stack.push_async_callback(client.aclose)
                active = ModelManager.from_settings(
                    settings,
                    GatewayClient(client),
                    store if store is not None else ObjectStore.from_settings(settings.s3),
                )
                # The first load runs in the background too: the app answers (503) at once.
                await active.start()
                stack.push_async_callback(active.stop)
            app.state.manager = active
            batcher = Batcher(
                max_size=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000,
                max_queued=settings.max_queued_requests,
            )
            batcher.start()
            stack.push_async_callback(batcher.stop)
            app.state.handler = PredictionHandler(
                active,
                max_batch_rows=settings.max_batch_rows,
                batcher=batcher,
                batching=settings.batching,
                batch_threshold_s=settings.batch_auto_threshold_ms / 1000,
                max_queued_requests=settings.max_queued_requests,
            )
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
    install_error_handlers(app)
    app.include_router(router)
    return app
