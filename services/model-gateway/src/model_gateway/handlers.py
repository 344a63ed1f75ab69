"""The gateway's logic: routes in ``api.py`` only translate HTTP to these calls."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from mlops_common.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PlatformError,
    ServiceUnavailable,
    Unprocessable,
    UpstreamError,
)
from mlops_common.names import alias_error, model_name_error
from mlops_common.storage import S3Uri, S3UriError, is_not_found
from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import SQLAlchemyError

from model_gateway import db
from model_gateway.events import AliasEvents, alias_event
from model_gateway.metrics import GatewayMetrics
from model_gateway.mlflow_client import MlflowApiError, MlflowClient
from model_gateway.mlmodel import ModelArtifacts, parse_mlmodel, to_s3_uri
from model_gateway.schemas import (
    AliasMove,
    AuditEntry,
    AuditHistory,
    Health,
    ModelDetail,
    ResolvedAlias,
    VersionSummary,
)
from model_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class ArtifactStore(Protocol):
    """The slice of ``mlops_common.storage.ObjectStore`` the gateway reads with."""

    def get_bytes(self, uri: S3Uri) -> bytes: ...


class LruCache(Generic[K, V]):
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.max_size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)


def validate_model_name(name: str) -> None:
    if problem := model_name_error(name):
        raise Unprocessable(problem, field="name")


def validate_alias(alias: str, *, for_write: bool) -> None:
    if problem := alias_error(alias, for_write=for_write):
        raise Unprocessable(problem, field="alias")


class GatewayHandler:
    def __init__(
        self,
        *,
        mlflow: MlflowClient,
        store: ArtifactStore,
        engine: Engine,
        settings: GatewaySettings,
        events: AliasEvents,
        metrics: GatewayMetrics,
    ) -> None:
        self.mlflow = mlflow
        self.store = store
        self.engine = engine
        self.settings = settings
        self.events = events
        self.metrics = metrics
        self.artifacts_cache: LruCache[tuple[str, int, str], ModelArtifacts] = LruCache(
            settings.resolve_cache_size
        )
        self._move_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- resolve -------------------------------------------------------------------------------

    async def resolve(self, name: str, alias: str) -> ResolvedAlias:
        validate_model_name(name)
        validate_alias(alias, for_write=False)
        try:
            mv = await self.mlflow.get_version_by_alias(name, alias)
        except MlflowApiError as exc:
            raise await self._explain_alias_miss(name, alias, exc) from exc
        version = _version_number(mv)
        artifacts = await self._artifacts(name, version, _str_or_none(mv.get("source")) or "")
        return ResolvedAlias(
            name=name,
            version=version,
            alias=alias,
            run_id=_str_or_none(mv.get("run_id")),
            artifact_uri=artifacts.artifact_uri,
            flavor=artifacts.flavor,
            flavors=artifacts.flavors,
            signature=artifacts.signature,
            model_id=_model_id(mv) or artifacts.model_id,
            source=_str_or_none(mv.get("source")),
            created_at=_from_millis(mv.get("creation_timestamp")),
        )

    async def _explain_alias_miss(
        self, name: str, alias: str, exc: MlflowApiError
    ) -> PlatformError:
        # MLflow answers 404 for an unknown model but 400 for an unset alias; ask which it is.
        model = await self._registered_model(name)
        if alias.lower() == "latest":
            if exc.not_found:
                return NotFound(
                    f"model '{name}' has no versions for alias '{alias}' to name", field="alias"
                )
        elif alias not in _aliases(model):
            return NotFound(f"alias '{alias}' is not set on model '{name}'", field="alias")
        return UpstreamError(
            f"MLflow could not resolve {name}@{alias}: {exc.error_code}", upstream="mlflow"
        )

    async def _artifacts(self, name: str, version: int, source: str) -> ModelArtifacts:
        # The source is part of the key: a deleted and re-created model reuses version numbers.
        key = (name, version, source)
        cached = self.artifacts_cache.get(key)
        if cached is not None:
            return cached
        try:
            download_uri = await self.mlflow.get_download_uri(name, version)
        except MlflowApiError as exc:
            raise UpstreamError(
                f"MLflow has no download URI for {name} version {version}: {exc.error_code}",
                upstream="mlflow",
            ) from exc
        artifact_uri = to_s3_uri(download_uri, self.settings.artifacts_destination)
        raw = await self._read_mlmodel(f"{artifact_uri}/MLmodel")
        artifacts = parse_mlmodel(raw, artifact_uri)
        self.artifacts_cache.put(key, artifacts)
        return artifacts

    async def _read_mlmodel(self, uri: str) -> bytes:
        try:
            target = S3Uri.parse(uri)
            return await asyncio.to_thread(self.store.get_bytes, target)
        except S3UriError as exc:
            raise UpstreamError(f"cannot read {uri}: {exc}", upstream="s3") from exc
        except (ClientError, BotoCoreError) as exc:
            if is_not_found(exc):
                raise UpstreamError(
                    f"no MLmodel file at {uri}: the model version's artifacts are missing",
                    upstream="s3",
                ) from exc
            log.warning("object store error reading %s: %r", uri, exc)
            raise UpstreamError(
                f"object store failed reading {uri} ({type(exc).__name__})", upstream="s3"
            ) from exc

    # -- move ----------------------------------------------------------------------------------

    async def move_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        reason: str | None,
        actor: str,
        on_behalf_of: str | None = None,
    ) -> AliasMove:
        validate_model_name(name)
        validate_alias(alias, for_write=True)
        # Serialises moves of one alias in this process so each audit row's from_version is
        # the holder it actually replaced.
        lock = self._move_locks.setdefault((name, alias), asyncio.Lock())
        async with lock:
            model = await self._registered_model(name)
            previous = _aliases(model).get(alias)
            mv = await self._model_version(name, version)
            status = _str_or_none(mv.get("status")) or "READY"
            if status != "READY":
                raise Conflict(
                    f"version {version} of model '{name}' is {status}, not READY",
                    field="version",
                )
            if previous == version:
                return AliasMove(
                    name=name,
                    alias=alias,
                    version=version,
                    previous_version=previous,
                    moved=False,
                    moved_at=None,
                    actor=actor,
                    on_behalf_of=on_behalf_of,
                    audit_id=None,
                )
            moved_at = datetime.now(UTC)
            audit_id = await self._set_alias_audited(
                name,
                alias,
                version,
                previous,
                actor=actor,
                on_behalf_of=on_behalf_of,
                reason=reason,
                moved_at=moved_at,
            )
            log.info(
                "moved %s@%s from %s to %s (actor=%s, audit_id=%s)",
                name,
                alias,
                previous,
                version,
                actor,
                audit_id,
            )
            move = AliasMove(
                name=name,
                alias=alias,
                version=version,
                previous_version=previous,
                moved=True,
                moved_at=moved_at,
                actor=actor,
                on_behalf_of=on_behalf_of,
                audit_id=audit_id,
            )
            self.metrics.alias_moves.labels(name, alias).inc()
            # Still under the lock, so subscribers receive the moves of one alias in commit order.
            await self._announce(move)
        return move

    async def _announce(self, move: AliasMove) -> None:
        """Publish a committed move; a failure is logged and counted, never raised."""
        try:
            await self.events.publish(alias_event(move))
        except Exception as exc:
            self.metrics.alias_events_failed.inc()
            log.warning(
                "%s@%s moved to %s but the move was not published (%s: %s); subscribers will "
                "see it on their next poll",
                move.name,
                move.alias,
                move.version,
                type(exc).__name__,
                exc,
            )

    async def _set_alias_audited(
        self,
        name: str,
        alias: str,
        version: int,
        previous: int | None,
        *,
        actor: str,
        on_behalf_of: str | None,
        reason: str | None,
        moved_at: datetime,
    ) -> int:
        """Write the audit row and move the alias: both happen, or neither is kept."""
        # The row is inserted first and committed only once MLflow has moved the alias, so a
        # failed move leaves no record and a database outage leaves the alias untouched.
        conn, trans = await self._db(self._begin)
        try:
            audit_id = await self._db(
                db.insert_move,
                conn,
                model_name=name,
                alias=alias,
                from_version=previous,
                to_version=version,
                actor=actor,
                on_behalf_of=on_behalf_of,
                reason=reason,
                moved_at=moved_at,
            )
            try:
                await self.mlflow.set_alias(name, alias, version)
            except BaseException:
                await asyncio.to_thread(_rollback_quietly, trans)
                raise
            try:
                await asyncio.to_thread(trans.commit)
            except SQLAlchemyError as exc:
                log.error(
                    "alias %s@%s was moved from %s to %s by %s (reason=%r) at %s, but the audit "
                    "row could not be committed: %s",
                    name,
                    alias,
                    previous,
                    version,
                    actor,
                    reason,
                    moved_at.isoformat(),
                    type(exc).__name__,
                )
                raise ServiceUnavailable(
                    "the alias was moved in MLflow but its audit record could not be saved; "
                    "see the gateway log",
                ) from exc
            return audit_id
        except MlflowApiError as exc:
            if exc.not_found:
                raise NotFound(f"model '{name}' has no version {version}", field="version") from exc
            raise BadRequest(f"MLflow refused the alias: {exc.message}", field="alias") from exc
        finally:
            await asyncio.to_thread(conn.close)

    def _begin(self) -> tuple[Connection, RootTransaction]:
        conn = self.engine.connect()
        try:
            return conn, conn.begin()
        except BaseException:
            conn.close()
            raise

    # -- history -------------------------------------------------------------------------------

    async def history(self, name: str, alias: str | None, limit: int) -> AuditHistory:
        validate_model_name(name)
        if alias is not None:
            validate_alias(alias, for_write=False)
        records = await self._db(db.list_moves, self.engine, name, alias, limit)
        return AuditHistory(
            name=name,
            records=[
                AuditEntry(
                    alias=r.alias,
                    from_version=r.from_version,
                    to_version=r.to_version,
                    actor=r.actor,
                    on_behalf_of=r.on_behalf_of,
                    reason=r.reason,
                    moved_at=r.moved_at,
                )
                for r in records
            ],
        )

    # -- list ----------------------------------------------------------------------------------

    async def describe_model(self, name: str) -> ModelDetail:
        validate_model_name(name)
        model = await self._registered_model(name)
        aliases = _aliases(model)
        try:
            versions = await self.mlflow.search_versions(
                name, self.settings.mlflow_search_page_size
            )
        except MlflowApiError as exc:
            raise UpstreamError(
                f"MLflow refused to list the versions of '{name}': {exc.error_code}",
                upstream="mlflow",
            ) from exc
        run_ids = sorted({r for v in versions if (r := _str_or_none(v.get("run_id")))})
        limit = asyncio.Semaphore(self.settings.mlflow_max_concurrency)

        async def fetch(run_id: str) -> tuple[str, dict[str, Any] | None]:
            async with limit:
                return run_id, await self._run_or_none(run_id)

        runs = dict(await asyncio.gather(*(fetch(r) for r in run_ids)))
        summaries = []
        for mv in versions:
            number = _version_number(mv)
            run_id = _str_or_none(mv.get("run_id"))
            run = runs.get(run_id) if run_id else None
            summaries.append(
                VersionSummary(
                    version=number,
                    run_id=run_id,
                    status=_str_or_none(mv.get("status")),
                    aliases=sorted(a for a, v in aliases.items() if v == number),
                    metrics=_run_metrics(run),
                    params=_run_params(run),
                    created_at=_from_millis(mv.get("creation_timestamp")),
                    source=_str_or_none(mv.get("source")),
                    model_id=_model_id(mv),
                )
            )
        summaries.sort(key=lambda s: s.version, reverse=True)
        return ModelDetail(
            name=name,
            description=_str_or_none(model.get("description")),
            aliases=dict(sorted(aliases.items())),
            versions=summaries,
        )

    async def _run_or_none(self, run_id: str) -> dict[str, Any] | None:
        try:
            return await self.mlflow.get_run(run_id)
        except MlflowApiError as exc:
            # A deleted or purged run should not hide the versions it produced.
            log.info("run %s of a model version is not readable: %s", run_id, exc)
            return None

    # -- health --------------------------------------------------------------------------------

    async def health(self) -> Health:
        timeout = min(self.settings.mlflow_timeout_s, 5.0)
        mlflow_ok, db_ok = await asyncio.gather(
            _passes("mlflow", self.mlflow.health, timeout),
            _passes("database", lambda: asyncio.to_thread(db.ping, self.engine), timeout),
        )
        return Health(
            status="ok" if mlflow_ok and db_ok else "unavailable",
            mlflow="ok" if mlflow_ok else "error",
            database="ok" if db_ok else "error",
        )

    # -- shared lookups ------------------------------------------------------------------------

    async def _registered_model(self, name: str) -> dict[str, Any]:
        try:
            return await self.mlflow.get_registered_model(name)
        except MlflowApiError as exc:
            if exc.not_found:
                raise NotFound(f"registered model '{name}' not found", field="name") from exc
            raise BadRequest(f"MLflow refused the model name: {exc.message}", field="name") from exc

    async def _model_version(self, name: str, version: int) -> dict[str, Any]:
        try:
            return await self.mlflow.get_model_version(name, version)
        except MlflowApiError as exc:
            if exc.not_found:
                raise NotFound(f"model '{name}' has no version {version}", field="version") from exc
            raise BadRequest(f"MLflow refused the version: {exc.message}", field="version") from exc

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except SQLAlchemyError as exc:
            log.warning("database error in %s: %r", getattr(fn, "__name__", fn), exc)
            raise ServiceUnavailable(
                f"the gateway's database is unavailable ({type(exc).__name__})"
            ) from exc


def _rollback_quietly(trans: RootTransaction) -> None:
    # The MLflow failure being raised is the one to report, not a rollback error behind it.
    try:
        trans.rollback()
    except SQLAlchemyError as exc:
        log.warning("rollback of an unused audit row failed: %r", exc)


async def _passes(part: str, check: Callable[[], Awaitable[object]], limit_s: float) -> bool:
    try:
        async with asyncio.timeout(limit_s):
            await check()
    except Exception as exc:
        log.warning("health check of %s failed: %s", part, exc)
        return False
    return True


def _aliases(model: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in model.get("aliases") or []:
        if not isinstance(entry, dict):
            continue
        try:
            out[str(entry["alias"])] = int(entry["version"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring malformed alias entry from MLflow: %r", entry)
    return out


def _version_number(mv: dict[str, Any]) -> int:
    try:
        return int(mv["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(
            "MLflow returned a model version without a numeric version", upstream="mlflow"
        ) from exc


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _model_id(mv: dict[str, Any]) -> str | None:
    # MLflow 3.17's REST answers omit model_id; the source "models:/<model_id>" still names it.
    if model_id := _str_or_none(mv.get("model_id")):
        return model_id
    source = _str_or_none(mv.get("source")) or ""
    logged = source.removeprefix("models:/")
    return logged if logged != source and logged and "/" not in logged else None


def _from_millis(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _run_metrics(run: dict[str, Any] | None) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for entry in ((run or {}).get("data") or {}).get("metrics") or []:
        try:
            key, value = str(entry["key"]), float(entry["value"])
        except (KeyError, TypeError, ValueError):
            continue
        # JSON has no NaN or infinity; MLflow sends them as strings.
        metrics[key] = value if math.isfinite(value) else None
    return dict(sorted(metrics.items()))


def _run_params(run: dict[str, Any] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for entry in ((run or {}).get("data") or {}).get("params") or []:
        if isinstance(entry, dict) and "key" in entry:
            params[str(entry["key"])] = str(entry.get("value", ""))
    return dict(sorted(params.items()))
