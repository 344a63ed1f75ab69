"""Routes of the service's own API. Thin on purpose: the work is in ``PredictionHandler``."""

from __future__ import annotations

from time import perf_counter
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from mlops_common.errors import ErrorResponse

from inference.body_limit import read_body
from inference.deps import FeedbackDep, HandlerDep, ServingDep
from inference.request_ids import HEADER, request_id
from inference.schemas import (
    FeedbackAccepted,
    FeedbackBatch,
    FeedbackItem,
    HealthResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    inline_schema,
)

router = APIRouter()

_REQUEST_ID_HEADER = {
    HEADER: {
        "description": "The request's id (the client's when short and safe, else a new one)",
        "schema": {"type": "string"},
    }
}

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
        200: {"headers": _REQUEST_ID_HEADER},
        413: {"model": ErrorResponse, "description": "More rows than max_batch_rows"},
        401: _UNAVAILABLE[401],
        403: _UNAVAILABLE[403],
        422: {"model": ErrorResponse, "description": "Body or rows invalid; `field` says where"},
        **_UNAVAILABLE,
    },
)
async def predict(request: Request, handler: ServingDep) -> Response:
    started = perf_counter()
    rid = request_id(request)
    # The raw body goes to the handler rather than through a pydantic model: this is the hot
    # path, and the handler validates every row against the model's own signature anyway.
    raw = await read_body(request, handler.max_body_bytes)
    prediction, model = await handler.predict_json(
        raw, request_id=rid, started=started, headers=request.headers
    )
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
    body["request_id"] = rid
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={HEADER: rid},
    )


@router.post(
    "/v1/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [inline_schema(FeedbackItem), inline_schema(FeedbackBatch)]}
                }
            },
        }
    },
    summary="Record true labels of earlier predictions (ground truth), by request id",
    description="One label (`{request_id, label}`) or many (`{items: [...]}`), all or none. "
    "Stored beside the prediction log as Parquet (s3://<bucket>/feedback/<model>/date=…/), "
    "to be joined with it on `request_id`.",
    responses={
        401: _UNAVAILABLE[401],
        403: _UNAVAILABLE[403],
        413: {"model": ErrorResponse, "description": "Body larger than max_body_bytes"},
        422: {"model": ErrorResponse, "description": "Body invalid; `field` says where"},
        503: {"model": ErrorResponse, "description": "Buffer full (S3 slow or down); retry"},
    },
)
async def feedback(request: Request, handler: FeedbackDep) -> FeedbackAccepted:
    raw = await read_body(request, handler.max_body_bytes)
    return FeedbackAccepted(accepted=handler.accept(raw))


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
