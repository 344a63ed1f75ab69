"""Owns the model being served and replaces it when the registry alias moves.

A background task asks the gateway every ``poll_interval_s`` which version the alias points to.
A new version is downloaded, loaded and checked off the event loop, then swapped in with a single
reference assignment: requests already running keep the model object they started with. When
anything fails the old model keeps serving, the failure is recorded in ``last_error``, and that
same version is retried only with exponential backoff: within seconds (``store_retry_base_s`` up
to ``store_retry_max_s``) when the object store could not be asked, after ``retry_base_s`` and
more when the version itself failed. Versions the platform did not sign, files changed since
signing, and artifacts that ask for code to be run (pickles, shipped code, untrusted types) or
files to be written outside the model's folder are refused the same way (see ``artifacts`` and
``safe_load``).

Each copy swapped in is recorded in the cache (``current.json``). A process that starts while
the gateway, MLflow behind it or the object store cannot be asked serves that copy instead of
nothing, once its signature and files are verified again, and reports itself degraded. When the
registry answers again the alias decides: another version is swapped in as usual; the same one is
checked once against the store, and withdrawn if the store's copy is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlops_common.errors import PlatformError
from mlops_common.signing import ManifestVerifier

from inference.artifacts import ArtifactCache, ArtifactSource, FetchedModel
from inference.errors import ModelLoadError, ModelRejected, StoreUnavailable, describe_exception
from inference.gateway import AliasMissing, GatewayClient, GatewayError
from inference.model import ModelVersion, ServedModel, load_served_model
from inference.settings import InferenceSettings
from inference.validation import build_frame

log = logging.getLogger(__name__)

_MAX_REMEMBERED_FAILURES = 16
# Under the cache root, beside the per-model folders: "@" is never in a folder _safe_name makes.
VARIANTS_DIR = "@variants"
# Backoff doubles per attempt; past this many doublings it has long reached its cap.
_MAX_DOUBLINGS = 30


ModelLoader = Callable[[Path, ModelVersion], ServedModel]
# "cache": loaded from the local cache without the registry's word (not yet confirmed).
Source = Literal["registry", "cache"]


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    # The object store could not be asked: retried on the short schedule.
    unavailable: bool


@dataclass(frozen=True)
class _Ready:
    """A model loaded and checked, and the cached copy it was loaded from."""

    model: ServedModel
    copy: FetchedModel


class ModelManager:
    def __init__(
        self,
        *,
        model_name: str,
        alias: str,
        gateway: GatewayClient,
        store: ArtifactSource,
        cache_dir: Path,
        verifier: ManifestVerifier | None,
        poll_interval_s: float = 2.0,
        loader: ModelLoader = load_served_model,
        retry_base_s: float = 30.0,
        retry_max_s: float = 600.0,
        store_retry_base_s: float = 1.0,
        store_retry_max_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] = lambda _event: None,
        variant: bool = False,
    ) -> None:
        self.model_name = model_name
        self.alias = alias
        self._gateway = gateway
        # Keys checked, signatures verified, copies kept by manifest digest; see artifacts.
        self._artifacts = ArtifactCache(store, cache_dir / _safe_name(model_name), verifier)
        self._served_dir: Path | None = None
        # The copy served before the current one stays cached: moving the alias back is quick.
        self._previous_dir: Path | None = None
        self._poll_interval_s = poll_interval_s
        self._loader = loader
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._store_retry_base_s = store_retry_base_s
        self._store_retry_max_s = store_retry_max_s
        self._clock = clock
        # Told "swapped", "rejected" (artifacts refused by safe_load or the download) or
        # "load_failed" (any other failure), for /metrics.
        self._on_event = on_event

        self._current: ServedModel | None = None
        self._source: Source | None = None
        self._pending_version: int | None = None
        self._load_error: str | None = None
        self._gateway_failure: GatewayError | None = None
        # Set while the last attempt to fetch could not reach the object store.
        self._store_error: str | None = None
        self._waiting: str | None = None
        # The local cache stands in at start only: it is tried once, and never after the
        # registry has had its say (no alias, or a version the store holds that failed).
        # A rollout's variant: never served from the cache unconfirmed, and champion answers
        # while it serves nothing.
        self._variant = variant
        self._cache_allowed = not variant
        self._cache_error: str | None = None
        self._failures: dict[tuple[int, str], _Failure] = {}
        # When the attempt this poll deferred or failed is due again (None: nothing deferred).
        self._retry_at: float | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: InferenceSettings,
        gateway: GatewayClient,
        store: ArtifactSource,
        *,
        on_event: Callable[[str], None],
        variant: str | None = None,
    ) -> ModelManager:
        """The manager of the instance's alias, or of a rollout's ``variant`` alias: that one
        keeps its copies apart (pruning one alias's copies must not delete another's) and serves
        only what the registry confirms, never the local cache."""
        return cls(
            model_name=settings.model_name,
            alias=settings.model_alias if variant is None else variant,
            gateway=gateway,
            store=store,
            cache_dir=settings.cache_dir
            if variant is None
            else settings.cache_dir / VARIANTS_DIR / _safe_name(variant),
            variant=variant is not None,
            verifier=settings.manifest_verifier(),
            poll_interval_s=settings.poll_interval_s,
            loader=functools.partial(load_served_model, fast_path=settings.fast_path),
            store_retry_base_s=settings.store_retry_base_s,
            store_retry_max_s=settings.store_retry_max_s,
            on_event=on_event,
        )

    # ---- state, read by request handlers -------------------------------------------------------
    @property
    def current(self) -> ServedModel | None:
        return self._current

    @property
    def source(self) -> Source | None:
        """Where the served model came from: "cache" until the registry has confirmed it."""
        return self._source if self._current is not None else None

    @property
    def last_error(self) -> str | None:
        return self._gateway_error or self._load_error

    @property
    def pending_version(self) -> int | None:
        """The version the alias points to while it is not (yet) the one served."""
        return self._pending_version

    @property
    def waiting_message(self) -> str | None:
        """Set while the gateway says the model or alias does not exist."""
        return self._waiting

    @property
    def cache_error(self) -> str | None:
        """Why the local cache could not be served while the registry could not be asked."""
        return self._cache_error

    @property
    def degraded(self) -> list[str]:
        """What the service cannot use right now, each as "<dependency>: <why>"."""
        reasons = []
        failure = self._gateway_failure
        if failure is not None:
            reasons.append(f"{failure.dependency}: {self._gateway_error}")
        if self._store_error is not None:
            reasons.append(f"s3: {self._store_error}")
        current = self._current
        if current is not None and self._source == "cache":
            reasons.append(
                f"cache: serving {current.meta.name} version {current.meta.version} from the "
                "local cache; the registry has not confirmed it yet"
            )
        return reasons

    @property
    def _gateway_error(self) -> str | None:
        failure = self._gateway_failure
        if failure is None:
            return None
        return f"cannot resolve {self.model_name}@{self.alias}: {failure}"

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"poll {self.model_name}")

    async def stop(self) -> None:
        # The process's exit waits for a download thread: make it give up first.
        self._artifacts.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Poll now instead of at the next interval (an alias-move event arrived)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception:
                # A bug in one poll must not stop the service from ever picking up a new version.
                log.exception("polling %s@%s failed", self.model_name, self.alias)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_poll_in())

    def _next_poll_in(self) -> float:
        """The poll interval, or less when a deferred attempt falls due sooner."""
        if self._retry_at is None:
            return self._poll_interval_s
        return min(self._poll_interval_s, max(0.0, self._retry_at - self._clock()))

    # ---- one poll ------------------------------------------------------------------------------
    async def poll_once(self) -> bool:
        """Ask the gateway once and act on the answer. True if a model was swapped in."""
        async with self._lock:
            self._retry_at = None
            target = await self._resolve()
            if target is None:
                failure = self._gateway_failure
                if failure is not None and failure.unavailable:
                    return await self._serve_cached(None)
                return False
            current = self._current
            if current is not None and _key(current.meta) == _key(target):
                # Also the way back from a failed promotion: the alias returned to what we serve.
                self._settled()
                if self._source == "cache" and self._due(target):
                    return await self._confirm(target)
                return False
            if not self._due(target):
                return False
            if await self._load(target):
                return True
            if self._store_error is not None:  # the store could not be asked
                return await self._serve_cached(target)
            return False

    async def _resolve(self) -> ModelVersion | None:
        try:
            served = self._current
            answer = await self._gateway.resolve(
                self.model_name,
                self.alias,
                served_version=served.meta.version if served is not None else None,
            )
        except GatewayError as exc:
            if self._gateway_failure is None:
                log.warning("cannot resolve %s@%s: %s", self.model_name, self.alias, exc)
            else:
                log.debug("still cannot resolve %s@%s: %s", self.model_name, self.alias, exc)
            self._gateway_failure = exc
            return None
        if self._gateway_failure is not None:
            log.info("gateway reachable again")
            self._gateway_failure = None
        if isinstance(answer, AliasMissing):
            if self._waiting is None:
                still = self._current
                log.info(
                    "waiting for %s@%s to be set in the registry (%s)%s",
                    self.model_name,
                    self.alias,
                    answer.message,
                    f"; still serving version {still.meta.version}" if still else "",
                )
            self._waiting = f"waiting for {self.model_name}@{self.alias}: {answer.message}"
            # A failure of the version the alias used to name is no longer relevant.
            self._settled()
            self._store_error = None
            self._cache_allowed = False
            return None
        self._waiting = None
        return answer

    def _settled(self) -> None:
        """No version is pending: the alias names what is served, or nothing."""
        self._pending_version = None
        self._load_error = None
        if self._source != "cache":
            # Nothing left to fetch: whether the store answers is neither known nor needed now.
            self._store_error = None

    def _due(self, target: ModelVersion) -> bool:
        failure = self._failures.get(_key(target))
        if failure is None or self._clock() >= failure.retry_at:
            return True
        self._retry_at = failure.retry_at
        return False

    async def _load(self, target: ModelVersion) -> bool:
        self._pending_version = target.version
        log.info(
            "loading %s version %s (%s@%s) from %s",
            target.name,
            target.version,
            self.model_name,
            self.alias,
            target.artifact_uri,
        )
        try:
            ready = await asyncio.to_thread(self._prepare, target)
        except Exception as exc:
            self._failed(target, exc)
            self._on_event("rejected" if isinstance(exc, ModelRejected) else "load_failed")
            if not isinstance(exc, StoreUnavailable):
                self._cache_allowed = False  # the version itself failed: the registry's say
            return False
        await self._swap_in(ready, "registry")
        return True

    async def _swap_in(self, ready: _Ready, source: Source) -> None:
        previous = self._current
        self._current = ready.model  # the swap: one reference assignment
        self._source = source
        if self._served_dir != ready.copy.path:
            self._previous_dir = self._served_dir
        self._served_dir = ready.copy.path
        self._cache_error = None
        self._on_event("swapped")
        _settle_heap()
        meta = ready.model.meta
        log.info(
            "now serving %s version %s%s%s",
            meta.name,
            meta.version,
            " from the local cache" if source == "cache" else "",
            f" (was version {previous.meta.version})" if previous is not None else "",
        )
        if source == "registry":
            self._failures.pop(_key(meta), None)
            self._pending_version = None
            self._load_error = None
            self._store_error = None
            await asyncio.to_thread(self._record_served, ready)

    def _failed(self, target: ModelVersion, exc: Exception, *, confirming: bool = False) -> None:
        """Record a failed attempt on ``target`` and when to try it again."""
        unavailable = isinstance(exc, StoreUnavailable)
        failure = self._back_off(target, unavailable)
        reason = str(exc) if isinstance(exc, ModelLoadError) else describe_exception(exc)
        problem = f"{target.name} version {target.version}: {reason}"
        self._store_error = problem if unavailable else None
        # The store being down while the served version is confirmed is only a degradation.
        if not (confirming and unavailable):
            self._load_error = problem
        current = self._current
        if current is None:
            serving = "its share goes to champion" if self._variant else "no model is served"
        else:
            cached = " from the local cache" if self._source == "cache" else ""
            serving = f"still serving version {current.meta.version}{cached}"
        what = f"confirming the cached copy of {problem}" if confirming else problem
        delay = failure.retry_at - self._clock()
        if unavailable:
            # An outage is retried every few seconds: said when it starts, not at every attempt.
            log.log(
                logging.WARNING if failure.attempts == 1 else logging.DEBUG,
                "%s (attempt %d; %s; next attempt in %.0fs)",
                what,
                failure.attempts,
                serving,
                delay,
            )
            return
        # Our own messages are complete unless they wrap an underlying exception.
        wants_trace = exc.__cause__ is not None or not isinstance(exc, ModelLoadError)
        log.error(
            "%s (attempt %d; %s; next attempt in %.0fs)",
            what,
            failure.attempts,
            serving,
            delay,
            exc_info=exc if wants_trace else None,
        )

    def _back_off(self, target: ModelVersion, unavailable: bool) -> _Failure:
        key = _key(target)
        failure = self._failures.pop(key, None)
        if failure is None or failure.unavailable != unavailable:
            # Another kind of failure starts its own schedule.
            failure = _Failure(attempts=0, retry_at=0.0, unavailable=unavailable)
        failure.attempts += 1
        if unavailable:
            base, cap = self._store_retry_base_s, self._store_retry_max_s
        else:
            base, cap = self._retry_base_s, self._retry_max_s
        doublings = min(failure.attempts - 1, _MAX_DOUBLINGS)
        failure.retry_at = self._clock() + min(cap, base * 2**doublings)
        self._failures[key] = failure
        while len(self._failures) > _MAX_REMEMBERED_FAILURES:
            self._failures.pop(next(iter(self._failures)))
        self._retry_at = failure.retry_at
        return failure

    # ---- the local cache, while the registry or the store cannot be asked ----------------------
    async def _serve_cached(self, target: ModelVersion | None) -> bool:
        """At start, serve the copy served last, verified again, instead of nothing. ``target``:
        what the alias names, when the gateway could say it but the store could not be read."""
        if self._current is not None or not self._cache_allowed:
            return False
        self._cache_allowed = False
        why = "; ".join(self.degraded)
        try:
            ready = await asyncio.to_thread(self._prepare_cached)
        except Exception as exc:
            self._cache_error = (
                str(exc) if isinstance(exc, ModelLoadError) else describe_exception(exc)
            )
            log.error(
                "cannot serve %s from the local cache either: %s; no model is served",
                self.model_name,
                self._cache_error,
                exc_info=exc if not isinstance(exc, ModelLoadError) else None,
            )
            return False
        await self._swap_in(ready, "cache")
        meta = ready.model.meta
        if target is not None and _key(meta) == _key(target):
            # The alias names the very version cached: nothing else is pending.
            self._pending_version = None
            self._load_error = None
        log.warning(
            "serving %s version %s from the local cache (%s); it is checked against the object "
            "store once the registry and the store answer",
            meta.name,
            meta.version,
            why,
        )
        return True

    async def _confirm(self, target: ModelVersion) -> bool:
        """The alias names the version served from the cache: check the store holds that copy.

        The listing is compared with the cached copy's record, so nothing is downloaded while
        the store is unchanged. True if the store held another copy, which is swapped in.
        """
        try:
            ready = await asyncio.to_thread(self._recheck, target)
        except ModelRejected as exc:
            await self._withdraw(target, exc)
            return False
        except Exception as exc:
            self._failed(target, exc, confirming=True)
            return False
        if ready is not None:
            await self._swap_in(ready, "registry")
            return True
        self._source = "registry"
        self._failures.pop(_key(target), None)
        self._store_error = None
        log.info(
            "the object store holds the copy of %s version %s served from the local cache: "
            "confirmed",
            target.name,
            target.version,
        )
        return False

    async def _withdraw(self, target: ModelVersion, exc: ModelRejected) -> None:
        """The store's copy of the version served from the cache is refused: it was tampered
        with, so neither copy is served, exactly as a refused first version would not be."""
        log.error(
            "withdrawing %s version %s, served from the local cache: the object store's copy "
            "is refused",
            target.name,
            target.version,
        )
        self._current = None
        self._source = None
        self._served_dir = None
        self._pending_version = target.version
        self._failed(target, exc)
        self._on_event("rejected")
        _settle_heap()
        # Nor served from the cache by a later start.
        await asyncio.to_thread(self._artifacts.forget)

    # ---- blocking work, run in a thread --------------------------------------------------------
    def _prepare(self, target: ModelVersion) -> _Ready:
        return self._load_copy(self._artifacts.fetch(target.name, target.artifact_uri), target)

    def _prepare_cached(self) -> _Ready:
        remembered = self._artifacts.remembered(self.model_name)
        meta = remembered.meta
        if (meta.name, meta.alias) != (self.model_name, self.alias):
            raise ModelLoadError(
                f"the cached copy was served as {meta.name}@{meta.alias}, not "
                f"{self.model_name}@{self.alias}"
            )
        if remembered.fetched.manifest is None:
            log.warning(
                "INFERENCE_REQUIRE_SIGNED_MODELS is false: the cached copy of %s version %s is "
                "served without checking its files were not changed",
                meta.name,
                meta.version,
            )
        # Already on this disk: a copy that fails to load stays for the store to replace.
        return self._load_copy(remembered.fetched, meta, discard=False)

    def _recheck(self, target: ModelVersion) -> _Ready | None:
        """None when the store holds the copy served; else the store's copy, loaded."""
        fetched = self._artifacts.fetch(target.name, target.artifact_uri)
        served = self._current
        if fetched.manifest is not None:
            if served is not None and fetched.manifest.digest == served.meta.manifest_sha256:
                return None
        elif not fetched.downloaded and fetched.path == self._served_dir:
            return None  # unsigned: only an unchanged listing says it is the same copy
        # Signed again, or an unsigned version changed in the store: serve the store's copy.
        return self._load_copy(fetched, target)

    def _load_copy(
        self, fetched: FetchedModel, version: ModelVersion, *, discard: bool = True
    ) -> _Ready:
        # What /model-info reports comes from the verified manifest, never from the gateway
        # (nor from the cache's record).
        manifest = fetched.manifest
        meta = version.model_copy(
            update={
                "manifest_sha256": manifest.digest if manifest else None,
                "signed_by": manifest.key_id if manifest else None,
            }
        )
        try:
            model = self._loader(fetched.path, meta)
            self._verify(model)
        except Exception:
            if discard:
                # A broken copy must not be reused by the next attempt.
                self._artifacts.discard(fetched)
            raise
        return _Ready(model, fetched)

    def _verify(self, model: ServedModel) -> None:
        if model.input_schema is None:
            log.warning(
                "%s version %s has no column signature: requests are passed to the model "
                "without validation",
                model.meta.name,
                model.meta.version,
            )
        example = model.input_example
        if not example:
            log.warning(
                "%s version %s has no input example: loaded without a test prediction",
                model.meta.name,
                model.meta.version,
            )
            return
        try:
            frame = build_frame(example, model.input_schema)
        except PlatformError as exc:
            raise ModelLoadError(
                f"its input example does not match its signature: {exc.field}: {exc.message}"
            ) from exc
        try:
            prediction = model.predict(frame)
        except Exception as exc:
            raise ModelLoadError(
                f"prediction on its input example failed: {describe_exception(exc)}"
            ) from exc
        if len(prediction.predictions) != len(frame):
            raise ModelLoadError(
                f"prediction on its input example returned {len(prediction.predictions)} "
                f"values for {len(frame)} rows"
            )

    def _record_served(self, ready: _Ready) -> None:
        """Name the copy now served in the cache, for a start without the registry; then drop
        the other copies."""
        try:
            self._artifacts.remember(ready.copy.path, ready.model.meta)
        except OSError as exc:
            log.warning(
                "cannot record the served copy in %s (%s): a start while the registry or the "
                "store is down will serve nothing",
                self._artifacts.root,
                describe_exception(exc),
            )
        keep = (ready.copy.path,) + ((self._previous_dir,) if self._previous_dir else ())
        self._artifacts.prune(*keep)


def _settle_heap() -> None:
    """Exclude the long-lived heap (libraries, the model) from the cyclic GC.

    With mlflow, pandas and scikit-learn imported there are millions of objects; a full
    collection over them stalls every request for 100 ms or more, which is what a serving p99
    shows. Frozen objects are never scanned; per-request garbage is still collected. Once per
    swap the frozen heap is thawed and collected (about 0.1 s), so a replaced model is freed.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    # A 100-row request allocates thousands of short-lived objects; at the default threshold (700)
    # that is several young-generation passes per request, measurably slowing JSON parsing.
    gc.set_threshold(50_000, 20, 100)


def _key(meta: ModelVersion) -> tuple[int, str]:
    # The URI too: a model deleted and registered again restarts at version 1.
    return (meta.version, meta.artifact_uri)


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return safe if safe not in ("", ".", "..") else f"_{safe}_"
