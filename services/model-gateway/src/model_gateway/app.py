"""Application factory: clients live on ``app.state`` and are built in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from mlops_common.auth import TokenStore, TokenVerifier, database_source
from mlops_common.db import make_engine, migrate
from mlops_common.errors import install_error_handlers
from mlops_common.http import make_async_client
from mlops_common.limits import BodyLimit
from mlops_common.metrics import install_metrics
from mlops_common.storage import ObjectStore
from sqlalchemy import Engine

from model_gateway import __version__, db
from model_gateway.api import router
from model_gateway.events import AliasEvents, NoAliasEvents, RedisAliasEvents
from model_gateway.handlers import ArtifactStore, GatewayHandler
from model_gateway.metrics import GatewayMetrics
from model_gateway.mlflow_client import MlflowClient
from model_gateway.rollouts import Rollouts
from model_gateway.settings import GatewaySettings
from model_gateway.tokens import TokensHandler

log = logging.getLogger(__name__)


def create_app(
    settings: GatewaySettings,
    *,
    mlflow_transport: httpx.AsyncBaseTransport | None = None,
    store: ArtifactStore | None = None,
    engine: Engine | None = None,
    publisher: AliasEvents | None = None,
) -> FastAPI:
    """Build the app; the keyword arguments replace real clients (tests pass fakes).

    An injected ``publisher`` belongs to the caller and is not closed on shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        db_engine = engine or make_engine(
            settings.db.url.get_secret_value(), pool_size=settings.db.pool_size
        )
        http = make_async_client(
            settings.mlflow.tracking_uri,
            timeout_s=settings.mlflow_timeout_s,
            retries=settings.mlflow_retries,
            transport=mlflow_transport,
            auth=settings.mlflow.basic_auth(),
        )
        own_events: RedisAliasEvents | None = None
        handler: GatewayHandler | None = None
        try:
            events: AliasEvents
            if publisher is not None:
                events = publisher
            elif settings.redis_url:
                events = own_events = RedisAliasEvents.from_url(
                    settings.redis_url, settings.alias_channel, settings.redis_timeout_s
                )
                log.info("alias moves are published on Redis channel %s", settings.alias_channel)
            else:
                events = NoAliasEvents()
                log.info("GATEWAY_REDIS_URL is not set: alias moves are not published")
            if settings.migrate_on_startup:
                # Migrate the database the engine really points at (tests inject one).
                url = db_engine.url.render_as_string(hide_password=False)
                await asyncio.to_thread(migrate, url, db.MIGRATIONS_DIR, db.VERSION_TABLE)
                log.info("database schema is at head (%s)", db.VERSION_TABLE)
            tokens = TokenStore(db_engine)
            app.state.verifier = verifier = TokenVerifier(
                database_source(tokens), ttl_s=settings.token_cache_ttl_s
            )
            app.state.tokens = TokensHandler(tokens, verifier)
            app.state.handler = handler = GatewayHandler(
                mlflow=MlflowClient(http),
                store=store or ObjectStore.from_settings(settings.s3),
                engine=db_engine,
                settings=settings,
                events=events,
                metrics=metrics,
            )
            app.state.rollouts = Rollouts(handler)
            yield
        finally:
            if handler is not None:
                # Served-version reports still being written need the engine.
                await handler.aclose()
            await http.aclose()
            if own_events is not None:
                await own_events.aclose()
            if own_engine:
                db_engine.dispose()

    app = FastAPI(
        title="model-gateway",
        version=__version__,
        description="Resolves MLflow registry aliases to s3:// artifact URIs and moves aliases "
        "with an audit trail.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Added before the metrics middleware, which therefore wraps it and counts its 413s.
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, setting="GATEWAY_MAX_BODY_BYTES"
    )
    metrics = GatewayMetrics(install_metrics(app, "model-gateway"))
    app.include_router(router)
    return app
