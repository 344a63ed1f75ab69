"""The ``/v2`` routes: health, metadata and inference, over ``PredictionHandler``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from importlib.metadata import version as package_version
from time import perf_counter
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from mlops_common.errors import NotFound, ServiceUnavailable

from inference.body_limit import read_body
from inference.deps import HandlerDep, ServingDep, authorize
from inference.handlers import PredictionHandler
from inference.model import Prediction, ServedModel
from inference.request_ids import HEADER, request_id
from inference.v2 import binary
from inference.v2.codec import decode_inputs, response_outputs, wanted_outputs
from inference.v2.metadata import describe
from inference.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    V2Error,
)

_RETRY = {"Retry-After": "1"}
# Scope key: when inference began (token checked), the start of the logged latency.
_STARTED = "inference.started"


class _V2Route(APIRoute):
    """Reads every V2 body as JSON, whatever its Content-Type, after unpacking binary tensors.

    Triton and KServe ignore Content-Type, and real clients rely on it: tritonclient.http posts
    without one, ``curl -d`` sends form-urlencoded. FastAPI would hand those bodies to the model
    as bytes ("Input should be a valid dictionary"), so the header is normalised here. The
    endpoints only score, so accepting such requests opens no cross-site write.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method != "POST":
                return await handle(request)
            # Decided first, so that every answer (a refused token's too) carries it.
            request_id(request)
            # Before the body is read: an unauthenticated client cannot make us buffer it.
            await authorize(request)
            request.scope[_STARTED] = perf_counter()
            # Read here, where a body over the size limit is a 413: FastAPI would turn an error
            # while it reads the body into a 400.
            handler: PredictionHandler = request.app.state.handler
            body = await read_body(request, handler.max_body_bytes)
            header_length = request.headers.get(binary.HEADER)
            if header_length is not None:
                body = binary.unpack_request(body, header_length)

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            return await handle(Request(_as_json(request.scope), receive))

        return route


def _as_json(scope: Any) -> dict[str, Any]:
    """The scope with its body declared JSON (and no stale length)."""
    replaced = (b"content-type", b"content-length", binary.HEADER.encode())
    headers = [(key, value) for key, value in scope["headers"] if key not in replaced]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=_V2Route)

# Errors under /v2 are the protocol's {"error": "<field>: <message>"} (see install_error_handlers).
_NOT_SERVED: dict[int | str, dict[str, Any]] = {
    401: {"model": V2Error, "description": "Missing, unknown, expired or revoked token"},
    403: {"model": V2Error, "description": "The token lacks `predict` for this model"},
    404: {"model": V2Error, "description": "Not the served model name or version"},
    503: {"model": V2Error, "description": "No model loaded yet"},
}


# ---- health and metadata ------------------------------------------------------------------------
@router.get(
    "",
    response_model=ServerMetadata,
    summary="Server metadata",
    responses={code: _NOT_SERVED[code] for code in (401, 403, 503)},
)
async def server_metadata(_: ServingDep) -> ServerMetadata:
    return ServerMetadata(
        name="inference", version=package_version("inference"), extensions=[binary.EXTENSION]
    )


@router.get("/health/live", response_model=ServerLive, summary="200 while the process answers")
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="200 while a model is served, 503 before",
    responses={503: {"model": ServerReady, "description": "No model loaded yet"}},
)
async def server_ready(handler: HandlerDep) -> JSONResponse:
    if handler.current is None:
        return JSONResponse({"ready": False}, status_code=503, headers=_RETRY)
    return JSONResponse({"ready": True})


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    # Parameters are optional in the protocol: absent rather than null.
    response_model_exclude_none=True,
    summary="Inputs and outputs of the served model",
    responses=_NOT_SERVED,
)
async def model_metadata(name: str, handler: ServingDep) -> ModelMetadata:
    return describe(_served(handler, name))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    # Parameters are optional in the protocol: absent rather than null.
    response_model_exclude_none=True,
    summary="Inputs and outputs of the served model (that version only)",
    responses=_NOT_SERVED,
)
async def model_version_metadata(name: str, version: str, handler: ServingDep) -> ModelMetadata:
    _served(handler, name)
    model = handler.choose(version=version).model
    if model is None:
        raise ServiceUnavailable("no model loaded yet (see GET /health)")
    return describe(model)


@router.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    summary="200 while the model is served, 503 before",
    responses=_NOT_SERVED,
)
async def model_ready(name: str, handler: ServingDep) -> JSONResponse:
    return _ready(handler, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    summary="200 while that version is served, 503 before",
    responses=_NOT_SERVED,
)
async def model_version_ready(name: str, version: str, handler: ServingDep) -> JSONResponse:
    return _ready(handler, name, version)


# ---- inference ----------------------------------------------------------------------------------
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": V2Error, "description": "More rows than max_batch_rows"},
    422: {"model": V2Error, "description": "Request invalid; the message starts with the field"},
    **_NOT_SERVED,
}


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    summary="Score tensors with the served model",
    responses=_INFER_RESPONSES,
)
async def infer(
    name: str, body: InferenceRequest, handler: ServingDep, request: Request
) -> Response:
    return await _infer(handler, name, None, body, request)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    summary="Score tensors with that version of the served model",
    responses=_INFER_RESPONSES,
)
async def infer_version(
    name: str, version: str, body: InferenceRequest, handler: ServingDep, request: Request
) -> Response:
    return await _infer(handler, name, version, body, request)


async def _infer(
    handler: PredictionHandler,
    name: str,
    version: str | None,
    body: InferenceRequest,
    request: Request,
) -> Response:
    rid = request_id(request)
    started: float = request.scope.get(_STARTED) or perf_counter()
    _served(handler, name)
    variant = handler.choose(request.headers, version=version)
    wanted = wanted_outputs(body.outputs)
    decoded: list[tuple[dict[str, list[Any]], int]] = []

    async def score(model: ServedModel) -> Prediction:
        # Read with the answering model's signature: a variant's may differ.
        columns, rows = decode_inputs(body.inputs, model.input_schema)
        decoded.append((columns, rows))
        return await handler.predict_columns(model, columns, rows, request_id=rid, started=started)

    # A version asked for by number answers itself or fails: no other version stands in.
    prediction, model = await handler.answer(
        variant, score, started=started, rescue=version is None
    )
    columns, rows = decoded[-1]
    handler.mirror(("columns", columns, rows), rid)
    outputs = response_outputs(prediction, wanted, body.outputs)
    meta = model.meta
    response: dict[str, Any] = {"model_name": meta.name, "model_version": str(meta.version)}
    # The protocol echoes the client's id; without one, ours (always in the header too).
    response["id"] = body.id if body.id is not None else rid
    response["parameters"] = {"alias": meta.alias}
    response["outputs"] = outputs
    binary_names = binary.binary_outputs(body, wanted)
    if binary_names:
        content, json_size = binary.pack_response(response, binary_names)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_size), HEADER: rid},
        )
    # Serialised here rather than through the response model: for large batches validating every
    # value again costs more than scoring. orjson writes NaN as null, which JSON needs anyway.
    return Response(orjson.dumps(response), media_type="application/json", headers={HEADER: rid})


# ---- the served model ---------------------------------------------------------------------------
def _served(handler: PredictionHandler, name: str) -> ServedModel:
    model = handler.current
    if model is None:
        raise ServiceUnavailable("no model loaded yet (see GET /health)")
    meta = model.meta
    if name != meta.name:
        raise NotFound(f"no model {name!r}; this server serves {meta.name!r}", field="name")
    return model


def _ready(handler: PredictionHandler, name: str, version: str | None) -> JSONResponse:
    if handler.current is None:
        return JSONResponse({"name": name, "ready": False}, status_code=503, headers=_RETRY)
    model = _served(handler, name)
    if version is not None:
        # Any variant of a rollout serving that version: it takes traffic now.
        model = handler.choose(version=version).model or model
    return JSONResponse({"name": model.meta.name, "ready": True})
