"""Owns the model being served and replaces it when the registry alias moves.

A background task asks the gateway every ``poll_interval_s`` which version the alias points to.
A new version is downloaded, loaded and checked off the event loop, then swapped in with a single
reference assignment: requests already running keep the model object they started with. When
anything fails the old model keeps serving, the failure is recorded in ``last_error``, and that
same version is retried only with exponential backoff. Versions the platform did not sign, files
changed since signing, and artifacts that ask for code to be run (pickles, shipped code,
untrusted types) or files to be written outside the model's folder are refused the same way
(see ``artifacts`` and ``safe_load``).
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

from mlops_common.errors import PlatformError
from mlops_common.signing import ManifestVerifier

from inference.artifacts import ArtifactCache, ArtifactSource
from inference.errors import ModelLoadError, ModelRejected, describe_exception
from inference.gateway import AliasMissing, GatewayClient, GatewayError
from inference.model import ModelVersion, ServedModel, load_served_model
from inference.settings import InferenceSettings
from inference.validation import build_frame

log = logging.getLogger(__name__)

_MAX_REMEMBERED_FAILURES = 16


ModelLoader = Callable[[Path, ModelVersion], ServedModel]


@dataclass
class _Failure:
    attempts: int
    retry_at: float


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
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] = lambda _event: None,
    ) -> None:
        self.model_name = model_name
        self.alias = alias
        self._gateway = gateway
        # Keys checked, signatures verified, copies kept by manifest digest; see artifacts.
        self._artifacts = ArtifactCache(store, cache_dir / _safe_name(model_name), verifier)
        self._served_dir: Path | None = None
        self._poll_interval_s = poll_interval_s
        self._loader = loader
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._clock = clock
        # Told "swapped", "rejected" (artifacts refused by safe_load or the download) or
        # "load_failed" (any other failure), for /metrics.
        self._on_event = on_event

        self._current: ServedModel | None = None
        self._pending_version: int | None = None
        self._load_error: str | None = None
        self._gateway_error: str | None = None
        self._waiting: str | None = None
        self._failures: dict[tuple[int, str], _Failure] = {}
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
    ) -> ModelManager:
        return cls(
            model_name=settings.model_name,
            alias=settings.model_alias,
            gateway=gateway,
            store=store,
            cache_dir=settings.cache_dir,
            verifier=settings.manifest_verifier(),
            poll_interval_s=settings.poll_interval_s,
            loader=functools.partial(load_served_model, fast_path=settings.fast_path),
            on_event=on_event,
        )

    # ---- state, read by request handlers -------------------------------------------------------
    @property
    def current(self) -> ServedModel | None:
        return self._current

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

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"poll {self.model_name}")

    async def stop(self) -> None:
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
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    # ---- one poll ------------------------------------------------------------------------------
    async def poll_once(self) -> bool:
        """Ask the gateway once and load a new version if the alias moved. True if swapped."""
        async with self._lock:
            target = await self._resolve()
            if target is None:
                return False
            current = self._current
            if current is not None and _key(current.meta) == _key(target):
                # Also the way back from a failed promotion: the alias returned to what we serve.
                self._pending_version = None
                self._load_error = None
                return False
            if not self._due(target):
                return False
            return await self._load(target)

    async def _resolve(self) -> ModelVersion | None:
        try:
            answer = await self._gateway.resolve(self.model_name, self.alias)
        except GatewayError as exc:
            if self._gateway_error is None:
                log.warning("cannot resolve %s@%s: %s", self.model_name, self.alias, exc)
            else:
                log.debug("still cannot resolve %s@%s: %s", self.model_name, self.alias, exc)
            self._gateway_error = f"cannot resolve {self.model_name}@{self.alias}: {exc}"
            return None
        if self._gateway_error is not None:
            log.info("gateway reachable again")
            self._gateway_error = None
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
            self._pending_version = None
            self._load_error = None
            return None
        self._waiting = None
        return answer

    def _due(self, target: ModelVersion) -> bool:
        failure = self._failures.get(_key(target))
        return failure is None or self._clock() >= failure.retry_at

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
            model = await asyncio.to_thread(self._prepare, target)
        except Exception as exc:
            self._record_failure(target, exc)
            self._on_event("rejected" if isinstance(exc, ModelRejected) else "load_failed")
            return False
        previous = self._current
        self._current = model  # the swap: one reference assignment
        self._on_event("swapped")
        _settle_heap()
        self._pending_version = None
        self._load_error = None
        self._failures.pop(_key(target), None)
        log.info(
            "now serving %s version %s%s",
            target.name,
            target.version,
            f" (was version {previous.meta.version})" if previous is not None else "",
        )
        await asyncio.to_thread(self._prune_cache)
        return True

    def _record_failure(self, target: ModelVersion, exc: Exception) -> None:
        key = _key(target)
        failure = self._failures.get(key) or _Failure(attempts=0, retry_at=0.0)
        failure.attempts += 1
        delay = min(self._retry_max_s, self._retry_base_s * 2 ** (failure.attempts - 1))
        failure.retry_at = self._clock() + delay
        self._failures[key] = failure
        while len(self._failures) > _MAX_REMEMBERED_FAILURES:
            self._failures.pop(next(iter(self._failures)))
        reason = str(exc) if isinstance(exc, ModelLoadError) else describe_exception(exc)
        self._load_error = f"{target.name} version {target.version}: {reason}"
        serving = (
            f"still serving version {self._current.meta.version}"
            if self._current is not None
            else "no model is served"
        )
        # Our own messages are complete unless they wrap an underlying exception.
        wants_trace = exc.__cause__ is not None or not isinstance(exc, ModelLoadError)
        log.error(
            "%s (attempt %d; %s; next attempt in %.0fs)",
            self._load_error,
            failure.attempts,
            serving,
            delay,
            exc_info=exc if wants_trace else None,
        )

    # ---- blocking work, run in a thread --------------------------------------------------------
    def _prepare(self, target: ModelVersion) -> ServedModel:
        fetched = self._artifacts.fetch(target.name, target.artifact_uri)
        # What /model-info reports comes from the verified manifest, never from the gateway.
        manifest = fetched.manifest
        meta = target.model_copy(
            update={
                "manifest_sha256": manifest.digest if manifest else None,
                "signed_by": manifest.key_id if manifest else None,
            }
        )
        try:
            model = self._loader(fetched.path, meta)
            self._verify(model)
        except Exception:
            # A broken copy must not be reused by the next attempt.
            self._artifacts.discard(fetched)
            raise
        self._served_dir = fetched.path
        return model

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

    def _prune_cache(self) -> None:
        if self._served_dir is not None:
            self._artifacts.prune(self._served_dir)


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
