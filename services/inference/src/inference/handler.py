"""What the routes do: validate rows, score them off the event loop, report the model's state."""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from mlops_common.errors import ServiceUnavailable, Unprocessable

from inference.errors import PayloadTooLarge, describe_exception
from inference.manager import ModelManager
from inference.model import Prediction, ServedModel
from inference.schema import HealthResponse, ModelInfo, ModelRef, PredictRequest, PredictResponse
from inference.validation import build_frame, check_batch_size

log = logging.getLogger(__name__)


class PredictionHandler:
    def __init__(self, manager: ModelManager, *, max_batch_rows: int) -> None:
        self._manager = manager
        self._max_batch_rows = max_batch_rows

    async def predict(self, request: PredictRequest) -> PredictResponse:
        prediction, model = await self.predict_rows(request.instances)
        return PredictResponse(
            predictions=prediction.predictions,
            probabilities=prediction.probabilities,
            classes=prediction.classes,
            model=_ref(model),
        )

    async def predict_rows(self, instances: list[Any]) -> tuple[Prediction, ServedModel]:
        """Score rows (objects, or lists in signature order) with the model served right now.

        Returns the model that answered: during a swap, a request finishes on the model it began
        with. Raises Unprocessable/PayloadTooLarge/ServiceUnavailable for the caller to render.
        """
        check_batch_size(instances)
        if len(instances) > self._max_batch_rows:
            raise PayloadTooLarge(
                f"at most {self._max_batch_rows} rows per request, got {len(instances)}; "
                "split the batch",
                field="instances",
            )
        model = self._require_model()
        # Validation of a large batch and the model itself are CPU work: keep them off the loop.
        prediction = await anyio.to_thread.run_sync(_score, model, instances)
        return prediction, model

    def health(self) -> tuple[int, HealthResponse]:
        manager = self._manager
        model = manager.current
        if model is not None:
            return 200, HealthResponse(
                status="ok",
                model=_ref(model),
                last_error=manager.last_error,
                pending_version=manager.pending_version,
                message=manager.waiting_message,
            )
        return 503, HealthResponse(
            status="loading" if manager.last_error is None else "unavailable",
            last_error=manager.last_error,
            pending_version=manager.pending_version,
            message=self._not_serving_message(),
        )

    def model_info(self) -> ModelInfo:
        model = self._require_model()
        meta = model.meta
        if model.loaded_at is None:  # not reachable: only loaded models are swapped in
            raise ServiceUnavailable("the model is still loading")
        return ModelInfo(
            name=meta.name,
            version=meta.version,
            alias=meta.alias,
            run_id=meta.run_id,
            artifact_uri=meta.artifact_uri,
            flavor=model.flavor,
            signature=model.signature,
            loaded_at=model.loaded_at,
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
            return f"no model loaded: {manager.last_error}"
        return f"no model loaded yet: resolving {target}"


def _score(model: ServedModel, instances: list[Any]) -> Prediction:
    frame = build_frame(instances, model.input_schema)
    try:
        return model.predict(frame)
    except (ValueError, TypeError, KeyError) as exc:
        # The rows match the signature (or there is none) but the model refuses them, e.g. a null
        # in a column the pipeline does not impute: the caller can fix that, so not a 500.
        log.warning("model rejected %d row(s): %s", len(frame), describe_exception(exc))
        raise Unprocessable(
            f"the model cannot score these rows: {describe_exception(exc)}", field="instances"
        ) from exc


def _ref(model: ServedModel) -> ModelRef:
    return ModelRef(name=model.meta.name, version=model.meta.version, alias=model.meta.alias)
