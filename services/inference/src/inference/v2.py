"""Open Inference Protocol v2 (KServe V2 / Triton / MLServer REST) over ``predict_rows``.

Tensors are turned into the rows ``/predict`` takes, so both APIs share one validation and one
scoring path and answer identically. Two request layouts are understood:

* one input per signature column, shape ``[n]`` or ``[n, 1]`` (MLServer's pandas layout);
* one ``[n, k]`` input, any name, whose columns follow the signature order.

Tensor data comes as JSON ``data`` or, with Triton's binary tensor data extension (tritonclient's
default), as raw bytes after a JSON header; see ``v2_binary``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import version as package_version
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from mlops_common.errors import NotFound, ServiceUnavailable, Unprocessable

from inference import v2_binary
from inference.body_limit import read_body
from inference.deps import HandlerDep, ServingDep, authorize
from inference.handler import PredictionHandler
from inference.model import Prediction, ServedModel
from inference.v2_schema import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    ModelReady,
    RequestInput,
    RequestOutput,
    ServerLive,
    ServerMetadata,
    ServerReady,
    V2Error,
)
from inference.validation import InputColumn, InputSchema

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
OUTPUT_NAMES = (PREDICT, PREDICT_PROBA)

_KNOWN_DATATYPES = frozenset(DATATYPES)
_MLFLOW_TO_V2 = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    # ISO 8601 strings, as /predict takes them.
    "datetime": "BYTES",
}
_NUMERIC_KINDS = frozenset({"double", "float", "long", "integer"})
_RETRY = {"Retry-After": "1"}


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
            # Before the body is read: an unauthenticated client cannot make us buffer it.
            await authorize(request)
            # Read here, where a body over the size limit is a 413: FastAPI would turn an error
            # while it reads the body into a 400.
            handler: PredictionHandler = request.app.state.handler
            body = await read_body(request, handler.max_body_bytes)
            header_length = request.headers.get(v2_binary.HEADER)
            if header_length is not None:
                body = v2_binary.unpack_request(body, header_length)

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            return await handle(Request(_as_json(request.scope), receive))

        return route


def _as_json(scope: Any) -> dict[str, Any]:
    """The scope with its body declared JSON (and no stale length)."""
    replaced = (b"content-type", b"content-length", v2_binary.HEADER.encode())
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
        name="inference", version=package_version("inference"), extensions=[v2_binary.EXTENSION]
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
    return _metadata(_served(handler, name, None))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    # Parameters are optional in the protocol: absent rather than null.
    response_model_exclude_none=True,
    summary="Inputs and outputs of the served model (that version only)",
    responses=_NOT_SERVED,
)
async def model_version_metadata(name: str, version: str, handler: ServingDep) -> ModelMetadata:
    return _metadata(_served(handler, name, version))


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
async def infer(name: str, body: InferenceRequest, handler: ServingDep) -> Response:
    return await _infer(handler, name, None, body)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    summary="Score tensors with that version of the served model",
    responses=_INFER_RESPONSES,
)
async def infer_version(
    name: str, version: str, body: InferenceRequest, handler: ServingDep
) -> Response:
    return await _infer(handler, name, version, body)


async def _infer(
    handler: PredictionHandler, name: str, version: str | None, body: InferenceRequest
) -> Response:
    model = _served(handler, name, version)
    wanted = _wanted_outputs(body.outputs)
    rows = build_rows(body.inputs, model.input_schema)
    prediction, served = await handler.predict_rows(rows)
    outputs = _response_outputs(prediction, wanted, body.outputs)
    response: dict[str, Any] = {
        "model_name": served.meta.name,
        "model_version": str(served.meta.version),
    }
    if body.id is not None:
        response["id"] = body.id
    response["parameters"] = {"alias": served.meta.alias}
    response["outputs"] = outputs
    binary = v2_binary.binary_outputs(body, wanted)
    if binary:
        content, json_size = v2_binary.pack_response(response, binary)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_size)},
        )
    # Serialised here rather than through the response model: for large batches validating every
    # value again costs more than scoring. orjson writes NaN as null, which JSON needs anyway.
    return Response(orjson.dumps(response), media_type="application/json")


# ---- tensors -> rows ----------------------------------------------------------------------------
def build_rows(inputs: Sequence[RequestInput], schema: InputSchema | None) -> list[Any]:
    """The rows ``predict_rows`` takes: lists in signature order, or objects when some are absent.

    Values are not checked here beyond the tensor layout: ``predict_rows`` validates them against
    the signature, with the same messages as ``/predict``.
    """
    columns = schema.columns if schema is not None else ()
    by_name = {column.name: column for column in columns}
    if len(inputs) == 1 and _is_table(inputs[0], by_name, len(columns)):
        return _table_rows(inputs[0], columns)
    return _column_rows(inputs, schema, by_name)


def _is_table(tensor: RequestInput, by_name: dict[str, InputColumn], width: int) -> bool:
    shape = tensor.shape
    if len(shape) == 2 and shape[1] != 1:
        return True
    # One unnamed column of a one-feature model is that feature.
    return width == 1 and tensor.name not in by_name and len(shape) in (1, 2)


def _table_rows(tensor: RequestInput, columns: Sequence[InputColumn]) -> list[list[Any]]:
    _check_datatype(0, tensor)
    shape = tensor.shape
    width = shape[1] if len(shape) == 2 else 1
    if width < 1:
        raise Unprocessable(
            f"a [n, k] tensor needs at least one column (k >= 1), got {_shape(shape)}",
            field="inputs[0].shape",
        )
    if columns and width != len(columns):
        raise Unprocessable(
            f"a single tensor must be [n, {len(columns)}], one column per signature input in "
            f"order ({_names(columns)}), got {_shape(shape)}",
            field="inputs[0].shape",
        )
    values = _flatten(0, tensor)
    n = shape[0]
    _check_rows(0, n)
    for j, column in enumerate(columns):
        if _needs_decoding(tensor, column.type):
            # A strided slice is that one column of the row-major data.
            values[j::width] = _decode_bytes(0, tensor, values[j::width], column.type)
    return [values[start : start + width] for start in range(0, n * width, width)]


def _column_rows(
    inputs: Sequence[RequestInput], schema: InputSchema | None, by_name: dict[str, InputColumn]
) -> list[Any]:
    data: dict[str, list[Any]] = {}
    rows = -1
    for i, tensor in enumerate(inputs):
        column = by_name.get(tensor.name)
        if schema is not None and column is None:
            raise Unprocessable(
                f"{tensor.name!r} is not an input of the model: send one input per feature "
                f"({_names(schema.columns)}), or one [n, {len(schema.columns)}] tensor with the "
                "features in that order",
                field=f"inputs[{i}].name",
            )
        if tensor.name in data:
            raise Unprocessable(f"input {tensor.name!r} given twice", field=f"inputs[{i}].name")
        _check_datatype(i, tensor)
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise Unprocessable(
                f"a feature input must be [n] or [n, 1], got {_shape(shape)}",
                field=f"inputs[{i}].shape",
            )
        if i == 0:
            rows = shape[0]
            _check_rows(i, rows)
        elif shape[0] != rows:
            raise Unprocessable(
                f"all inputs must have the same number of rows: {tensor.name!r} has {shape[0]}, "
                f"{inputs[0].name!r} has {rows}",
                field=f"inputs[{i}].shape",
            )
        values = _flatten(i, tensor)
        kind = column.type if column is not None else "string"
        if _needs_decoding(tensor, kind):
            values = _decode_bytes(i, tensor, values, kind)
        data[tensor.name] = values

    if schema is None:
        names = list(data)
        return [dict(zip(names, row, strict=True)) for row in zip(*data.values(), strict=True)]
    if any(c.required and c.name not in data for c in schema.columns):
        # Objects without those keys, so predict_rows reports the missing features as /predict
        # does; only the error path pays for building dicts.
        names = list(data)
        return [dict(zip(names, row, strict=True)) for row in zip(*data.values(), strict=True)]
    # zip transposes in C; absent optional features are nulls, as in /predict.
    ordered = [data[c.name] if c.name in data else repeat(None, rows) for c in schema.columns]
    return list(map(list, zip(*ordered, strict=True)))


def _check_datatype(i: int, tensor: RequestInput) -> None:
    if tensor.datatype not in _KNOWN_DATATYPES:
        raise Unprocessable(
            f"unknown datatype {tensor.datatype!r}; expected one of {', '.join(DATATYPES)}",
            field=f"inputs[{i}].datatype",
        )


def _check_rows(i: int, rows: int) -> None:
    if rows < 1:
        raise Unprocessable("must contain at least one row", field=f"inputs[{i}].shape")


def _flatten(i: int, tensor: RequestInput) -> list[Any]:
    """``data`` as a flat row-major list, checked against ``shape``."""
    shape = tensor.shape
    if any(size < 0 for size in shape):
        raise Unprocessable(
            f"dimensions must be 0 or more, got {_shape(shape)}", field=f"inputs[{i}].shape"
        )
    flat = tensor.data
    depth = 0
    while flat and type(flat[0]) is list:
        depth += 1
        width = shape[depth] if depth < len(shape) else -1
        if not all(type(part) is list and len(part) == width for part in flat):
            raise Unprocessable(
                f"nested data does not match shape {_shape(shape)} at depth {depth}",
                field=f"inputs[{i}].data",
            )
        flat = list(chain.from_iterable(flat))
    expected = math.prod(shape)
    if len(flat) != expected:
        raise Unprocessable(
            f"shape {_shape(shape)} holds {expected} values, data has {len(flat)}",
            field=f"inputs[{i}].shape",
        )
    return flat


def _base64(tensor: RequestInput) -> bool:
    return (tensor.parameters or {}).get("content_type") == "base64"


def _needs_decoding(tensor: RequestInput, kind: str) -> bool:
    """Whether BYTES values need per-value work; plain strings (the common case) do not."""
    if tensor.datatype != "BYTES":
        return False
    return _base64(tensor) or kind == "binary" or kind in _NUMERIC_KINDS or kind == "boolean"


def _decode_bytes(i: int, tensor: RequestInput, values: list[Any], kind: str) -> list[Any]:
    """BYTES values as ``/predict`` wants them for a column of MLflow type ``kind``.

    Numbers and booleans may come as text: tritonclient sends every cell of a mixed numpy
    object array as a string. Text that does not parse is left for validation to report.
    """
    if _base64(tensor):
        if kind == "binary":
            return values  # /predict takes binary columns as base64 already
        values = [_from_base64(i, value) for value in values]
    elif kind == "binary":
        return [
            base64.b64encode(value.encode()).decode() if isinstance(value, str) else value
            for value in values
        ]
    if kind in _NUMERIC_KINDS:
        return [_number(value) if isinstance(value, str) else value for value in values]
    if kind == "boolean":
        return [_boolean(value) if isinstance(value, str) else value for value in values]
    return values


def _from_base64(i: int, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError) as exc:
        # UnicodeDecodeError is a ValueError: the bytes are not text a string column can hold.
        raise Unprocessable(
            f"{value[:40]!r} is not base64-encoded UTF-8 text", field=f"inputs[{i}].data"
        ) from exc


def _number(text: str) -> Any:
    """``"42"`` -> 42, ``"nan"`` -> NaN (missing); anything else stays text for validation."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _boolean(text: str) -> Any:
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return text


# ---- prediction -> outputs ----------------------------------------------------------------------
def _wanted_outputs(requested: list[RequestOutput] | None) -> frozenset[str]:
    if not requested:
        return frozenset(OUTPUT_NAMES)
    for j, output in enumerate(requested):
        if output.name not in OUTPUT_NAMES:
            raise Unprocessable(
                f"unknown output {output.name!r}; outputs: {', '.join(OUTPUT_NAMES)}",
                field=f"outputs[{j}].name",
            )
    return frozenset(output.name for output in requested)


def _response_outputs(
    prediction: Prediction, wanted: frozenset[str], requested: list[RequestOutput] | None
) -> list[dict[str, Any]]:
    probabilities = prediction.probabilities
    if PREDICT_PROBA in wanted and probabilities is None and requested:
        j = next(j for j, output in enumerate(requested) if output.name == PREDICT_PROBA)
        raise Unprocessable(
            f"this model has no {PREDICT_PROBA} output (not a classifier with probabilities); "
            f"outputs: {PREDICT}",
            field=f"outputs[{j}].name",
        )
    outputs: list[dict[str, Any]] = []
    if PREDICT in wanted:
        predictions = prediction.predictions
        shape = [len(predictions)]
        if predictions and type(predictions[0]) is list:  # multi-output estimators
            shape.append(len(predictions[0]))
            predictions = list(chain.from_iterable(predictions))
        outputs.append(
            {
                "name": PREDICT,
                "shape": shape,
                "datatype": _datatype_of(predictions),
                "data": predictions,
            }
        )
    if PREDICT_PROBA in wanted and probabilities is not None:
        classes = prediction.classes
        width = len(probabilities[0]) if probabilities else len(classes or ())
        output: dict[str, Any] = {
            "name": PREDICT_PROBA,
            "shape": [len(probabilities), width],
            "datatype": "FP64",
            "data": list(chain.from_iterable(probabilities)),
        }
        if classes is not None:
            output["parameters"] = {"classes": _classes_parameter(classes)}
        outputs.append(output)
    return outputs


def _datatype_of(values: Sequence[Any]) -> str:
    # Predictions come from one numpy array, so the first non-null value speaks for all.
    first = next((value for value in values if value is not None), None)
    if first is None or type(first) is float:
        return "FP64"
    if type(first) is bool:
        return "BOOL"
    if type(first) is int:
        return "INT64"
    return "BYTES"


def _classes_parameter(classes: list[Any]) -> str:
    # The protocol allows only string, number and boolean parameter values (gRPC clients and
    # KServe's converters reject lists), so the labels travel as a JSON array in a string.
    return orjson.dumps(classes).decode()


# ---- model state --------------------------------------------------------------------------------
def _served(handler: PredictionHandler, name: str, version: str | None) -> ServedModel:
    model = handler.current
    if model is None:
        raise ServiceUnavailable("no model loaded yet (see GET /health)")
    meta = model.meta
    if name != meta.name:
        raise NotFound(f"no model {name!r}; this server serves {meta.name!r}", field="name")
    if version is not None and version != str(meta.version):
        raise NotFound(
            f"{meta.name} version {version} is not served; version {meta.version} is "
            f"(alias {meta.alias})",
            field="version",
        )
    return model


def _ready(handler: PredictionHandler, name: str, version: str | None) -> JSONResponse:
    if handler.current is None:
        return JSONResponse({"name": name, "ready": False}, status_code=503, headers=_RETRY)
    model = _served(handler, name, version)
    return JSONResponse({"name": model.meta.name, "ready": True})


def _metadata(model: ServedModel) -> ModelMetadata:
    schema = model.input_schema
    inputs = [
        MetadataTensor(name=c.name, datatype=_MLFLOW_TO_V2.get(c.type, "BYTES"), shape=[-1])
        for c in (schema.columns if schema is not None else ())
    ]
    classes = proba_classes(model)
    outputs = [MetadataTensor(name=PREDICT, datatype=_predict_datatype(model, classes), shape=[-1])]
    if classes is not None:
        outputs.append(
            MetadataTensor(
                name=PREDICT_PROBA,
                datatype="FP64",
                shape=[-1, len(classes)],
                parameters={"classes": _classes_parameter(classes)},
            )
        )
    return ModelMetadata(
        name=model.meta.name,
        versions=[str(model.meta.version)],
        platform=model.flavor,
        inputs=inputs,
        outputs=outputs,
    )


def proba_classes(model: ServedModel) -> list[Any] | None:
    """Class labels when the model is a classifier with ``predict_proba``, else None.

    ServedModel does not expose its estimator's classes yet; until it does (``model.classes``),
    this looks at the sklearn estimator SklearnModel keeps.
    """
    declared = getattr(model, "classes", None)
    if isinstance(declared, list):
        return declared
    estimator = getattr(model, "_estimator", None)
    if estimator is None:
        return None
    from sklearn.base import is_classifier  # only metadata needs it; keep it off import

    # hasattr honours Pipeline's available_if: False when the last step has no predict_proba.
    if not is_classifier(estimator) or not hasattr(estimator, "predict_proba"):
        return None
    classes = getattr(estimator, "classes_", None)
    if not isinstance(classes, np.ndarray) or classes.ndim != 1:
        return None  # multi-output classifiers have one label array per output
    labels: list[Any] = classes.tolist()
    return labels


def _predict_datatype(model: ServedModel, classes: list[Any] | None) -> str:
    outputs = (model.signature or {}).get("outputs")
    if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict):
        spec = outputs[0]
        if spec.get("type") == "tensor":
            dtype = (spec.get("tensor-spec") or {}).get("dtype")
            try:
                return _numpy_datatype(np.dtype(dtype))
            except TypeError:
                pass
        elif spec.get("type") in _MLFLOW_TO_V2:
            return _MLFLOW_TO_V2[spec["type"]]
    if classes:
        return _datatype_of(classes)
    return "FP64"


def _numpy_datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in "iu":
        return f"{'U' if dtype.kind == 'u' else ''}INT{dtype.itemsize * 8}"
    if dtype.kind == "f":
        return f"FP{dtype.itemsize * 8}"
    return "BYTES"


def _names(columns: Sequence[InputColumn]) -> str:
    names = [c.name for c in columns]
    return ", ".join(names[:10]) + (", …" if len(names) > 10 else "")


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"
