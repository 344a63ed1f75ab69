"""Routes of the service's own API. Thin on purpose: the work is in ``PredictionHandler``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from mlops_common.errors import ErrorResponse

from inference.body_limit import read_body
from inference.deps import HandlerDep, ServingDep
from inference.schemas import (
    HealthResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
)

router = APIRouter()

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, unknown, expired or revoked token"},
    403: {"model": ErrorResponse, "description": "The token lacks `predict` for this model"},
    503: {"model": ErrorResponse, "description": "No model loaded yet (see GET /health)"},
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        }
    },
    summary="Score rows with the served model",
    responses={
        413: {"model": ErrorResponse, "description": "More rows than max_batch_rows"},
        401: _UNAVAILABLE[401],
        403: _UNAVAILABLE[403],
        422: {"model": ErrorResponse, "description": "Body or rows invalid; `field` says where"},
        **_UNAVAILABLE,
    },
)
async def predict(request: Request, handler: ServingDep) -> Response:
    # The raw body goes to the handler rather than through a pydantic model: this is the hot
    # path, and the handler validates every row against the model's own signature anyway.
    raw = await read_body(request, handler.max_body_bytes)
    prediction, model = await handler.predict_json(raw)
    body: dict[str, Any] = {
        "predictions": prediction.predictions,
        "probabilities": prediction.probabilities,
        "classes": prediction.classes,
    }
    body["model"] = {
        "name": model.meta.name,
        "version": model.meta.version,
        "alias": model.meta.alias,
    }
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="200 while a model is served (status ok or degraded), 503 before",
    responses={503: {"model": HealthResponse, "description": "No model loaded yet"}},
)
async def health(handler: HandlerDep) -> JSONResponse:
    health = handler.health()
    body = health.model_dump(mode="json")
    if health.status not in ("ok", "degraded"):
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(body)


@router.get(
    "/model-info",
    response_model=ModelInfo,
    summary="The served model version, its source and signature",
    responses=_UNAVAILABLE,
)
async def model_info(handler: ServingDep) -> ModelInfo:
    return handler.model_info()
