"""What the routes do, without HTTP: validate rows, score them off the event loop, report state.

Returns domain values and raises ``PlatformError``s; the route modules turn them into responses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any, NoReturn, TypeVar

import anyio.to_thread
import numpy as np
import orjson
import pandas as pd
from mlops_common.errors import NotFound, PlatformError, ServiceUnavailable, Unprocessable

from inference.batching import Batcher, QueueFull
from inference.errors import PayloadTooLarge, describe_exception
from inference.fastpath import Decoded
from inference.manager import ModelManager
from inference.model import Prediction, ServedModel
from inference.prediction_log import PredictionLog
from inference.rollout import MirrorInput, Rollout, Variant
from inference.schemas import HealthResponse, ModelInfo, ModelRef, RolloutState
from inference.validation import build_frame, build_frame_from_columns, check_batch_size

log = logging.getLogger(__name__)

T = TypeVar("T")


# Up to this many rows (or bytes of body) are decoded on the event loop (a fraction of a
# millisecond); larger requests are decoded in a thread so they do not stall the others.
INLINE_ROWS = 512
INLINE_BYTES = 256 * 1024
# A compiled model call cheaper than this runs on the event loop: a thread hop costs more.
INLINE_COST_S = 0.002
FAILURE_LOG_INTERVAL_S = 10.0


class PredictionHandler:
    def __init__(
        self,
        rollout: Rollout,
        *,
        max_batch_rows: int,
        batcher: Batcher | None = None,
        batching: str = "auto",
        batch_threshold_s: float = 0.0005,
        max_queued_requests: int = 256,
        max_body_bytes: int = 64 * 1024 * 1024,
        on_overload: Callable[[str], None] = lambda _reason: None,
        prediction_log: PredictionLog | None = None,
    ) -> None:
        self._rollout = rollout
        self._manager: ModelManager = rollout.holder.manager
        self._max_batch_rows = max_batch_rows
        self._batcher = batcher
        self._batching = batching
        self._batch_threshold_s = batch_threshold_s
        self._max_queued = max_queued_requests
        self.max_body_bytes = max_body_bytes
        self._in_threads = 0
        # Told the reason whenever a request is turned away because the service is full.
        self._on_overload = on_overload
        # None when logging is off: a request then pays one attribute test.
        self._log = prediction_log
        self._failure_logged: dict[str, float] = {}

    @property
    def current(self) -> ServedModel | None:
        """The model serving right now (None before the first load)."""
        return self._manager.current

    # ---- choosing the variant, and answering from another when it fails -------------------------
    def choose(
        self, headers: Mapping[str, str] | None = None, *, version: str | None = None
    ) -> Variant:
        """The variant to answer a request: by the rollout, or the one serving ``version`` (a
        client may ask for a version by its number: V2's ``/versions/{v}``)."""
        rollout = self._rollout
        if version is None:
            return rollout.pick(headers)
        variant = rollout.variant_serving(int(version)) if version.isdigit() else None
        if variant is None:
            model = self._require_model()
            meta = model.meta
            raise NotFound(
                f"{meta.name} version {version} is not served; version {meta.version} is "
                f"(alias {meta.alias})",
                field="version",
            )
        return variant

    async def answer(
        self,
        variant: Variant,
        score: Callable[[ServedModel], Awaitable[Prediction]],
        *,
        started: float,
        rescue: bool = True,
    ) -> tuple[Prediction, ServedModel]:
        """``score`` with ``variant``'s model. When a variant other than the holder fails the
        request, the holder answers instead (unless ``rescue`` is false: the caller asked for
        that version), and the failure counts as the variant's only if the holder succeeds: the
        caller's own bad input fails everywhere."""
        holder = self._rollout.holder
        model = self._require_model() if variant is holder else variant.model
        if model is None:  # unloaded since it was picked: its share goes to the holder
            variant, model = holder, self._require_model()
        rescue = rescue and variant is not holder
        try:
            prediction = await score(model)
        except Unprocessable as exc:
            if not rescue:
                raise
            failed = variant
            self._variant_failed(variant, exc)
        except PlatformError:
            raise
        except Exception as exc:
            if not rescue:
                variant.failed()
                raise
            failed = variant
            self._variant_failed(variant, exc)
        else:
            variant.served(perf_counter() - started, model, prediction)
            return prediction, model
        model = self._require_model()
        prediction = await score(model)
        failed.failed()
        holder.served(perf_counter() - started, model, prediction)
        return prediction, model

    def _variant_failed(self, variant: Variant, exc: Exception) -> None:
        # A broken challenger fails a share of every second's requests: said every 10 s at most.
        now = perf_counter()
        if now - self._failure_logged.get(variant.alias, -FAILURE_LOG_INTERVAL_S) < (
            FAILURE_LOG_INTERVAL_S
        ):
            return
        self._failure_logged[variant.alias] = now
        log.warning(
            "variant %s (version %s) failed a request, answered by %s instead: %s",
            variant.alias,
            variant.model.meta.version if variant.model is not None else "?",
            self._rollout.holder.alias,
            describe_exception(exc),
            exc_info=exc if not isinstance(exc, PlatformError) else None,
        )

    def mirror(self, payload: MirrorInput, request_id: str) -> None:
        """A copy of an answered request for the rollout's mirror, if it has one."""
        self._rollout.mirror(payload, request_id)

    async def predict_json(
        self,
        raw: bytes,
        *,
        request_id: str,
        started: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Prediction, ServedModel]:
        """Score the rows of a ``/predict`` body (``{"instances": [...]}``) with the variant the
        rollout picks (``headers``: the request's, for a sticky key), and log them as
        ``request_id`` (``started``: ``time.perf_counter()`` when the request began)."""

        async def score(model: ServedModel) -> Prediction:
            return await self._score_json(model, raw, request_id=request_id, started=started)

        answer = await self.answer(self.choose(headers), score, started=started)
        self._rollout.mirror(("json", raw), request_id)
        return answer

    async def _score_json(
        self, model: ServedModel, raw: bytes, *, request_id: str, started: float
    ) -> Prediction:
        decoded = await self._in_thread_if(len(raw) > INLINE_BYTES, model.decode_json, raw)
        if decoded is not None:
            self._check_row_count(decoded.rows)
            prediction = await self._predict_decoded(model, decoded)
            self._record(request_id, started, model, decoded, prediction)
            return prediction
        # Not the compiled model's plain form: parse generally and validate field by field.
        instances = parse_instances(raw)
        return await self._predict_rows(model, instances, request_id=request_id, started=started)

    async def _predict_rows(
        self, model: ServedModel, instances: list[Any], *, request_id: str, started: float
    ) -> Prediction:
        """Score rows (objects, or lists in signature order) with ``model``: during a swap, a
        request finishes on the model it began with. Raises Unprocessable/PayloadTooLarge/
        ServiceUnavailable for the caller to render.
        """
        check_batch_size(instances)
        self._check_row_count(len(instances))
        decoded = await self._in_thread_if(
            len(instances) > INLINE_ROWS, model.decode_rows, instances
        )
        inputs: Decoded | pd.DataFrame
        if decoded is not None:
            inputs, prediction = decoded, await self._predict_decoded(model, decoded)
        else:
            # Anything the compiled path does not take (or no compiled path): the full
            # validator, which names every problem, then scikit-learn itself, off the event loop.
            prediction, inputs = await self._in_thread(_score, model, build_frame, instances)
        self._record(request_id, started, model, inputs, prediction)
        return prediction

    async def predict_columns(
        self,
        model: ServedModel,
        columns: dict[str, list[Any]],
        rows: int,
        *,
        request_id: str,
        started: float,
    ) -> Prediction:
        """Score named columns of ``rows`` values each (V2 tensors) with ``model``, the one the
        caller read the columns' types from; same checks, errors and log as ``predict_json``."""
        self._check_row_count(rows)
        decoded = await self._in_thread_if(rows > INLINE_ROWS, model.decode_columns, columns, rows)
        inputs: Decoded | pd.DataFrame
        if decoded is not None:
            inputs, prediction = decoded, await self._predict_decoded(model, decoded)
        else:
            prediction, inputs = await self._in_thread(
                _score, model, build_frame_from_columns, columns, rows
            )
        self._record(request_id, started, model, inputs, prediction)
        return prediction

    def _record(
        self,
        request_id: str,
        started: float,
        model: ServedModel,
        inputs: Decoded | pd.DataFrame,
        prediction: Prediction,
    ) -> None:
        if self._log is not None:
            self._log.record(request_id, started, model, inputs, prediction)

    def _check_row_count(self, rows: int) -> None:
        if rows > self._max_batch_rows:
            raise PayloadTooLarge(
                f"at most {self._max_batch_rows} rows per request, got {rows}; split the batch",
                field="instances",
            )

    async def _predict_decoded(self, model: ServedModel, decoded: Decoded) -> Prediction:
        x = await self._in_thread_if(decoded.rows > INLINE_ROWS, model.transform, decoded)
        predictions, probabilities = await self._score_matrix(model, x)
        return model.as_prediction(predictions, probabilities)

    def _batches(self, model: ServedModel) -> bool:
        # Only decoded input reaches here, so the model is compiled.
        if self._batcher is None or self._batching == "off":
            return False
        return self._batching == "on" or model.call_cost_s >= self._batch_threshold_s

    async def _score_matrix(
        self, model: ServedModel, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self._batches(model):
            assert self._batcher is not None
            try:
                return await self._batcher.submit(model, x)
            except QueueFull as exc:
                self._overloaded(str(exc))
        if model.call_cost_s * max(1, x.shape[0] / 32) < INLINE_COST_S:
            return model.predict_matrix(x)
        return await self._in_thread(model.predict_matrix, x)

    async def _in_thread_if(self, large: bool, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the event loop, or in a thread when the input is large."""
        return await self._in_thread(func, *args) if large else func(*args)

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        if self._in_threads >= self._max_queued:
            self._overloaded(f"{self._in_threads} requests are already being scored")
        self._in_threads += 1
        try:
            return await anyio.to_thread.run_sync(func, *args)
        finally:
            self._in_threads -= 1

    def _overloaded(self, reason: str) -> NoReturn:
        self._on_overload(reason)
        raise ServiceUnavailable(f"the service is at capacity ({reason}); retry shortly")

    def health(self) -> HealthResponse:
        """The service's state, from memory only: ``status`` is "ok" or "degraded" while a model
        is served."""
        manager = self._manager
        model = manager.current
        degraded = manager.degraded
        state = self._rollout.state()
        rollout = None if state is None else RolloutState.model_validate(state)
        if model is not None:
            return HealthResponse(
                status="degraded" if degraded else "ok",
                model=_ref(model),
                source=manager.source,
                degraded=degraded,
                last_error=manager.last_error,
                pending_version=manager.pending_version,
                message=manager.waiting_message,
                rollout=rollout,
            )
        return HealthResponse(
            status="loading" if manager.last_error is None else "unavailable",
            degraded=degraded,
            last_error=manager.last_error,
            pending_version=manager.pending_version,
            message=self._not_serving_message(),
        )

    def model_info(self) -> ModelInfo:
        model = self._require_model()
        meta = model.meta
        return ModelInfo(
            name=meta.name,
            version=meta.version,
            alias=meta.alias,
            run_id=meta.run_id,
            artifact_uri=meta.artifact_uri,
            flavor=model.flavor,
            signature=model.signature,
            loaded_at=model.loaded_at,
            manifest_sha256=meta.manifest_sha256,
            signed_by=meta.signed_by,
        )

    def _require_model(self) -> ServedModel:
        model = self._manager.current
        if model is None:
            raise ServiceUnavailable(self._not_serving_message())
        return model

    def _not_serving_message(self) -> str:
        manager = self._manager
        target = f"{manager.model_name}@{manager.alias}"
        if manager.waiting_message is not None:
            return f"no model loaded yet: {manager.waiting_message}"
        if manager.pending_version is not None and manager.last_error is None:
            return f"no model loaded yet: loading {target} version {manager.pending_version}"
        if manager.last_error is not None:
            cache = manager.cache_error
            fallback = f"; the local cache cannot be served: {cache}" if cache else ""
            return f"no model loaded: {manager.last_error}{fallback}"
        return f"no model loaded yet: resolving {target}"


def parse_instances(raw: bytes) -> list[Any]:
    """The rows of a ``/predict`` body, or a 422 naming what is wrong with its shape."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"malformed JSON: {exc}", field="body") from exc
    if not isinstance(body, dict):
        raise Unprocessable('expected an object {"instances": [...]}', field="body")
    instances = body.get("instances")
    if instances is None:
        raise Unprocessable('field required: {"instances": [...]}', field="instances")
    unknown = sorted(set(body) - {"instances"})
    if unknown:
        raise Unprocessable(f"unknown fields: {', '.join(unknown)}", field=unknown[0])
    if not isinstance(instances, list):
        raise Unprocessable("must be a list of rows (objects or lists)", field="instances")
    return instances


def _score(
    model: ServedModel, to_frame: Callable[..., pd.DataFrame], *args: Any
) -> tuple[Prediction, pd.DataFrame]:
    """``model.predict`` on ``to_frame(*args, model.input_schema)``, the validated input, and
    that input (for the prediction log)."""
    frame = to_frame(*args, model.input_schema)
    try:
        return model.predict(frame), frame
    except (ValueError, TypeError, KeyError) as exc:
        # The rows match the signature (or there is none) but the model refuses them, e.g. a null
        # in a column the pipeline does not impute: the caller can fix that, so not a 500.
        log.warning("model rejected %d row(s): %s", len(frame), describe_exception(exc))
        raise Unprocessable(
            f"the model cannot score these rows: {describe_exception(exc)}", field="instances"
        ) from exc


def _ref(model: ServedModel) -> ModelRef:
    return ModelRef(name=model.meta.name, version=model.meta.version, alias=model.meta.alias)
