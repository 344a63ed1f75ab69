"""The gateway's logic: routes in ``api.py`` only translate HTTP to these calls."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from mlops_common.signing import MAX_ENVELOPE_BYTES, SIGNATURE_FILE, SignatureError
from mlops_common.storage import ObjectTooLarge, S3Uri, S3UriError, is_not_found
from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import SQLAlchemyError

from model_gateway import db
from model_gateway.events import AliasEvents, alias_event
from model_gateway.metrics import GatewayMetrics
from model_gateway.mlflow_client import MlflowApiError, MlflowClient
from model_gateway.mlmodel import ModelArtifacts, parse_mlmodel, to_s3_uri
from model_gateway.schemas import (
    MAX_VERSION,
    AliasMove,
    AuditEntry,
    AuditHistory,
    Health,
    Lineage,
    LineageDataset,
    LineageEtl,
    LineageTrainingRun,
    LineageVersion,
    ModelDetail,
    ResolvedAlias,
    ServedBy,
    SignatureCheck,
    SignatureStatus,
    VersionSummary,
)
from model_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


# MLmodel files are a few kilobytes; one this large is not MLflow's.
MAX_MLMODEL_BYTES = 1024 * 1024
# A lineage lists at most this many alias moves of one version (oldest first).
MAX_LINEAGE_MOVES = 1000

# What an inference instance says about itself on every resolve. The instance is host:port (a
# host name, an IPv4 address or a bracketed IPv6 one); the served version is empty before the
# instance has loaded one.
INSTANCE_HEADER = "X-Inference-Instance"
SERVED_VERSION_HEADER = "X-Served-Version"
MAX_INSTANCE_LENGTH = 255
INSTANCE_PATTERN = r"^[A-Za-z0-9\[][A-Za-z0-9._:\[\]-]{0,254}$"
SERVED_VERSION_PATTERN = r"^(?:[1-9][0-9]{0,9})?$"
_INSTANCE = re.compile(INSTANCE_PATTERN)
_SERVED_VERSION = re.compile(SERVED_VERSION_PATTERN)
_DIGITS = re.compile(r"[0-9]{1,18}")
# Reports remembered to skip rewriting an unchanged one (per instance, model and alias).
SERVED_THROTTLE_SIZE = 4096
# Report writes in flight at once; beyond it a report is dropped (and counted), never queued.
MAX_PENDING_SERVED_WRITES = 8
# Stale reports are deleted at most this often.
SERVED_PRUNE_INTERVAL_S = 60.0
# A malformed report is logged at most this often (it arrives every couple of seconds).
REFUSED_REPORT_LOG_INTERVAL_S = 60.0

# Tags the trainer sets on a training run and on the version it registers.
RUN_JOB_TAG = "trainer.job_id"
TRAINER_VERSION_TAG = "mlops.trainer_version"
IMAGE_TAG = "mlops.image"
DAG_ID_TAG = "mlops.dag_id"
DAG_RUN_ID_TAG = "mlops.dag_run_id"
ETL_MANIFEST_TAG = "mlops.etl_manifest"
VERSION_JOB_TAG = "mlops.job_id"
MANIFEST_SHA256_TAG = "mlops.manifest_sha256"
SIGNED_BY_TAG = "mlops.signed_by"


class ArtifactStore(Protocol):
    """The slice of ``mlops_common.storage.ObjectStore`` the gateway reads with."""

    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes: ...


@dataclass(frozen=True)
class InstanceHeaders:
    """The ``X-Inference-Instance`` and ``X-Served-Version`` headers of a resolve, unchecked."""

    instance: str
    served_version: str | None


def served_report_error(headers: InstanceHeaders) -> str | None:
    """Why the headers cannot be recorded, or None when they can."""
    if len(headers.instance) > MAX_INSTANCE_LENGTH or not _INSTANCE.fullmatch(headers.instance):
        return (
            f"{INSTANCE_HEADER} must be host:port in letters, digits and '.-_:[]' (at most "
            f"{MAX_INSTANCE_LENGTH} characters)"
        )
    served = headers.served_version or ""
    if not _SERVED_VERSION.fullmatch(served) or (served and int(served) > MAX_VERSION):
        return f"{SERVED_VERSION_HEADER} must be empty or a version number"
    return None


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
        self.verifier = settings.manifest_verifier()
        # (instance, model, alias) -> (served version, reporter, monotonic time of the write).
        self._served_writes: LruCache[tuple[str, str, str], tuple[int | None, str, float]] = (
            LruCache(SERVED_THROTTLE_SIZE)
        )
        self._served_tasks: set[asyncio.Task[None]] = set()
        self._last_prune = -math.inf
        self._last_refusal_log = -math.inf

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let pending served-version writes finish (within ``timeout_s``) before shutdown."""
        if self._served_tasks:
            _, pending = await asyncio.wait(set(self._served_tasks), timeout=timeout_s)
            if pending:
                log.warning("%d served-version reports were not written", len(pending))

    # -- resolve -------------------------------------------------------------------------------

    async def resolve(
        self,
        name: str,
        alias: str,
        *,
        report: InstanceHeaders | None = None,
        reporter: str | None = None,
    ) -> ResolvedAlias:
        """Resolve ``name@alias``; an inference instance's ``report`` of what it serves is
        recorded in the background (never delaying nor failing the resolve)."""
        validate_model_name(name)
        validate_alias(alias, for_write=False)
        try:
            mv = await self.mlflow.get_version_by_alias(name, alias)
        except MlflowApiError as exc:
            raise await self._explain_alias_miss(name, alias, exc) from exc
        version = _version_number(mv)
        artifacts = await self._artifacts(name, version, _str_or_none(mv.get("source")) or "")
        if report is not None and reporter is not None:
            self._note_served(name, alias, report, reporter)
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
        model = await self.registered_model(name)
        if alias.lower() == "latest":
            if exc.not_found:
                return NotFound(
                    f"model '{name}' has no versions for alias '{alias}' to name", field="alias"
                )
        elif alias not in registered_aliases(model):
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
        artifact_uri = await self._artifact_uri(name, version)
        raw = await self._read_mlmodel(f"{artifact_uri}/MLmodel")
        artifacts = parse_mlmodel(raw, artifact_uri)
        self.artifacts_cache.put(key, artifacts)
        return artifacts

    async def _artifact_uri(self, name: str, version: int) -> str:
        try:
            download_uri = await self.mlflow.get_download_uri(name, version)
        except MlflowApiError as exc:
            raise UpstreamError(
                f"MLflow has no download URI for {name} version {version}: {exc.error_code}",
                upstream="mlflow",
            ) from exc
        return to_s3_uri(download_uri, self.settings.artifacts_destination)

    async def _read_mlmodel(self, uri: str) -> bytes:
        try:
            raw = await self._read_object(uri, max_bytes=MAX_MLMODEL_BYTES)
        except ObjectTooLarge as exc:
            raise UpstreamError(
                f"the MLmodel file at {uri} is larger than {MAX_MLMODEL_BYTES} bytes",
                upstream="s3",
            ) from exc
        if raw is None:
            raise UpstreamError(
                f"no MLmodel file at {uri}: the model version's artifacts are missing",
                upstream="s3",
            )
        return raw

    async def _read_object(self, uri: str, *, max_bytes: int) -> bytes | None:
        """The object's bytes, or None when there is no such object; an object over
        ``max_bytes`` raises ``ObjectTooLarge`` without being read whole."""
        try:
            target = S3Uri.parse(uri)
            return await asyncio.to_thread(self.store.get_bytes, target, max_bytes)
        except S3UriError as exc:
            raise UpstreamError(f"cannot read {uri}: {exc}", upstream="s3") from exc
        except (ClientError, BotoCoreError) as exc:
            if is_not_found(exc):
                return None
            log.warning("object store error reading %s: %r", uri, exc)
            raise UpstreamError(
                f"object store failed reading {uri} ({type(exc).__name__})", upstream="s3"
            ) from exc

    # -- served-by reports -------------------------------------------------------------------

    def _note_served(self, name: str, alias: str, report: InstanceHeaders, reporter: str) -> None:
        """Record in the background what an instance serves; cheap when nothing changed."""
        if problem := served_report_error(report):
            self.metrics.served_reports_refused.inc()
            now = time.monotonic()
            if now - self._last_refusal_log >= REFUSED_REPORT_LOG_INTERVAL_S:
                self._last_refusal_log = now
                log.warning(
                    "not recording a report of token %r on %s@%s: %s",
                    reporter,
                    name,
                    alias,
                    problem,
                )
            return
        served = int(report.served_version) if report.served_version else None
        key = (report.instance, name, alias)
        now = time.monotonic()
        previous = self._served_writes.get(key)
        if (
            previous is not None
            and previous[:2] == (served, reporter)
            and now - previous[2] < self.settings.served_by_write_interval_s
        ):
            return
        if len(self._served_tasks) >= MAX_PENDING_SERVED_WRITES:
            # The database is slow: drop this report; the instance reports again in seconds.
            self.metrics.served_reports_failed.inc()
            return
        self._served_writes.put(key, (served, reporter, now))
        task = asyncio.create_task(
            self._record_served(
                instance=report.instance,
                model_name=name,
                alias=alias,
                served_version=served,
                reported_by=reporter,
                seen_at=datetime.now(UTC),
            )
        )
        self._served_tasks.add(task)
        task.add_done_callback(self._served_tasks.discard)

    async def _record_served(
        self,
        *,
        instance: str,
        model_name: str,
        alias: str,
        served_version: int | None,
        reported_by: str,
        seen_at: datetime,
    ) -> None:
        """Write one report; a failure is logged and counted, never raised."""
        try:
            await asyncio.to_thread(
                db.record_served,
                self.engine,
                instance=instance,
                model_name=model_name,
                alias=alias,
                served_version=served_version,
                reported_by=reported_by,
                seen_at=seen_at,
            )
            now = time.monotonic()
            if now - self._last_prune >= SERVED_PRUNE_INTERVAL_S:
                self._last_prune = now
                retention = timedelta(seconds=self.settings.served_by_retention_s)
                pruned = await asyncio.to_thread(db.prune_served, self.engine, seen_at - retention)
                if pruned:
                    log.info("deleted %d served-version reports older than %s", pruned, retention)
        except Exception as exc:
            self.metrics.served_reports_failed.inc()
            log.warning(
                "could not record that %s serves %s@%s (v%s): %s: %s",
                instance,
                model_name,
                alias,
                served_version,
                type(exc).__name__,
                exc,
            )

    async def settle(self) -> None:
        """Wait for the served-version writes in flight."""
        while self._served_tasks:
            await asyncio.wait(set(self._served_tasks))

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
            model = await self.registered_model(name)
            previous = registered_aliases(model).get(alias)
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
        conn, trans = await self.db_call(self._begin)
        try:
            audit_id = await self.db_call(
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
        records = await self.db_call(db.list_moves, self.engine, name, alias, limit)
        return AuditHistory(name=name, records=[_audit_entry(r) for r in records])

    # -- list ----------------------------------------------------------------------------------

    async def describe_model(self, name: str) -> ModelDetail:
        validate_model_name(name)
        model = await self.registered_model(name)
        aliases = registered_aliases(model)
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

    # -- lineage -----------------------------------------------------------------------------

    async def lineage(self, name: str, version: int) -> Lineage:
        """Data, DAG run, training run, version, alias moves and serving instances of one
        version."""
        validate_model_name(name)
        model = await self.registered_model(name)
        mv = await self._model_version(name, version)
        number = _version_number(mv)
        run_id = _str_or_none(mv.get("run_id"))
        version_tags = _tags(mv.get("tags"))
        window = self.settings.served_by_window_s
        since = datetime.now(UTC) - timedelta(seconds=window)
        run, (artifact_uri, signature), moves, served = await asyncio.gather(
            self._lineage_run(run_id),
            self._signed_artifacts(name, number, run_id, version_tags),
            self.db_call(db.list_version_moves, self.engine, name, number, MAX_LINEAGE_MOVES + 1),
            self.db_call(db.list_served, self.engine, name, number, since),
        )
        run_tags = _tags(((run or {}).get("data") or {}).get("tags"))
        params = _run_params(run)
        return Lineage(
            dataset=_dataset(params, run_tags),
            etl=_etl(run_tags),
            training_run=_training_run(run, run_id, params, run_tags) if run else None,
            version=LineageVersion(
                name=name,
                version=number,
                status=_str_or_none(mv.get("status")),
                created_at=_from_millis(mv.get("creation_timestamp")),
                artifact_uri=artifact_uri,
                run_id=run_id,
                source=_str_or_none(mv.get("source")),
                job_id=version_tags.get(VERSION_JOB_TAG),
                signature=signature,
            ),
            alias_moves=[_audit_entry(r) for r in moves[:MAX_LINEAGE_MOVES]],
            alias_moves_truncated=len(moves) > MAX_LINEAGE_MOVES,
            aliases_now=sorted(a for a, v in registered_aliases(model).items() if v == number),
            served_by=[
                ServedBy(
                    instance=r.instance,
                    alias=r.alias,
                    last_seen=r.last_seen,
                    reported_by=r.reported_by,
                )
                for r in served
            ],
            served_by_window_s=window,
        )

    async def _lineage_run(self, run_id: str | None) -> dict[str, Any] | None:
        return await self._run_or_none(run_id) if run_id else None

    async def _signed_artifacts(
        self, name: str, version: int, run_id: str | None, tags: dict[str, str]
    ) -> tuple[str, SignatureCheck]:
        """The version's s3:// artifact URI and what its ``mlops-signature.json`` proves."""
        artifact_uri = await self._artifact_uri(name, version)
        expected = tags.get(MANIFEST_SHA256_TAG)
        signed_by = tags.get(SIGNED_BY_TAG)

        def check(
            status: SignatureStatus, reason: str | None = None, signed_at: str | None = None
        ) -> tuple[str, SignatureCheck]:
            return artifact_uri, SignatureCheck(
                status=status,
                reason=reason,
                manifest_sha256=expected,
                signed_by=signed_by,
                signed_at=signed_at,
            )

        uri = f"{artifact_uri}/{SIGNATURE_FILE}"
        try:
            envelope = await self._read_object(uri, max_bytes=MAX_ENVELOPE_BYTES)
        except ObjectTooLarge:
            return check("invalid", f"{SIGNATURE_FILE} is larger than {MAX_ENVELOPE_BYTES} bytes")
        if envelope is None:
            return check("missing")
        if self.verifier is None:
            return check("unverified")
        try:
            manifest = await asyncio.to_thread(self.verifier.verify, envelope, model_name=name)
        except SignatureError as exc:
            return check("invalid", str(exc))
        if expected is None:
            return check(
                "invalid", f"the version has no {MANIFEST_SHA256_TAG} tag to match the manifest"
            )
        if manifest.digest != expected:
            return check(
                "invalid",
                f"the signed manifest's digest {manifest.digest} is not the version's "
                f"{MANIFEST_SHA256_TAG} tag",
            )
        if signed_by is not None and signed_by != manifest.key_id:
            return check(
                "invalid",
                f"signed by {manifest.key_id}, but the version's {SIGNED_BY_TAG} tag says "
                f"{signed_by}",
            )
        if run_id is not None and manifest.run_id is not None and manifest.run_id != run_id:
            return check(
                "invalid", f"signed for run {manifest.run_id}, not the version's run {run_id}"
            )
        return check("verified", signed_at=manifest.signed_at)

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

    async def registered_model(self, name: str) -> dict[str, Any]:
        """The registered model as MLflow describes it; 404 when there is none."""
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

    async def db_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in a thread; a database error is a 503."""
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


def registered_aliases(model: dict[str, Any]) -> dict[str, int]:
    """Alias -> version of a registered model as MLflow describes it."""
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


def _tags(raw: Any) -> dict[str, str]:
    """MLflow's ``[{"key", "value"}]`` tag list as a mapping (non-empty string values only)."""
    tags: dict[str, str] = {}
    for entry in raw if isinstance(raw, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            continue
        if value := _str_or_none(entry.get("value")):
            tags[entry["key"]] = value
    return tags


def _audit_entry(record: db.AuditRecord) -> AuditEntry:
    return AuditEntry(
        alias=record.alias,
        from_version=record.from_version,
        to_version=record.to_version,
        actor=record.actor,
        on_behalf_of=record.on_behalf_of,
        reason=record.reason,
        moved_at=record.moved_at,
    )


def _dataset(params: dict[str, str], run_tags: dict[str, str]) -> LineageDataset | None:
    source = params.get("dataset_source") or None
    digest = params.get("dataset_digest") or None
    rows = params.get("dataset_rows")
    manifest = run_tags.get(ETL_MANIFEST_TAG)
    if source is None and digest is None and rows is None and manifest is None:
        return None
    return LineageDataset(
        source=source,
        # Built-in sets are named sklearn:<name>; data the trainer reads has a URI.
        builtin=source is not None and "://" not in source,
        digest=digest,
        rows=int(rows) if rows is not None and _DIGITS.fullmatch(rows) else None,
        etl_manifest=manifest,
    )


def _etl(run_tags: dict[str, str]) -> LineageEtl | None:
    dag_id, dag_run_id = run_tags.get(DAG_ID_TAG), run_tags.get(DAG_RUN_ID_TAG)
    if dag_id is None and dag_run_id is None:
        return None
    return LineageEtl(dag_id=dag_id, dag_run_id=dag_run_id)


def _training_run(
    run: dict[str, Any], run_id: str | None, params: dict[str, str], run_tags: dict[str, str]
) -> LineageTrainingRun:
    raw_info = run.get("info")
    info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
    return LineageTrainingRun(
        run_id=_str_or_none(info.get("run_id")) or run_id or "",
        experiment_id=_id_or_none(info.get("experiment_id")),
        run_name=_str_or_none(info.get("run_name")),
        status=_str_or_none(info.get("status")),
        params=params,
        metrics=_run_metrics(run),
        started_at=_from_millis(info.get("start_time")),
        ended_at=_from_millis(info.get("end_time")),
        code_version=run_tags.get(TRAINER_VERSION_TAG),
        image=run_tags.get(IMAGE_TAG),
        job_id=run_tags.get(RUN_JOB_TAG),
    )


def _id_or_none(value: Any) -> str | None:
    # MLflow's ids are strings in JSON, but an int must not be lost either.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str_or_none(value)
