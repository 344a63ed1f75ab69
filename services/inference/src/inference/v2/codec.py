"""V2 tensors to named columns, and predictions to V2 outputs.

Two request layouts are understood:

* one input per signature column, shape ``[n]`` or ``[n, 1]`` (MLServer's pandas layout);
* one ``[n, k]`` input, any name, whose columns follow the signature order.

Each becomes a column of values per feature, which the compiled path reads straight into arrays
and the validator into DataFrame columns (``validation.build_frame_from_columns``), so V2 and
``/predict`` share one validation and answer identically. Binary tensor data reaches here as
JSON ``data`` (see ``binary``).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import orjson
from mlops_common.errors import Unprocessable

from inference.model import Prediction
from inference.v2.schemas import DATATYPES, RequestInput, RequestOutput
from inference.validation import InputColumn, InputSchema

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
OUTPUT_NAMES = (PREDICT, PREDICT_PROBA)

_KNOWN_DATATYPES = frozenset(DATATYPES)
_NUMERIC_KINDS = frozenset({"double", "float", "long", "integer"})

# Feature name -> its values; the positions 0..k-1 for a table the model has no names for.
Columns = dict[Any, list[Any]]


# ---- tensors -> columns -------------------------------------------------------------------------
def decode_inputs(
    inputs: Sequence[RequestInput], schema: InputSchema | None
) -> tuple[Columns, int]:
    """The tensors as columns and their row count.

    Values are not checked here beyond the tensor layout: scoring validates them against the
    signature, with the same messages as ``/predict``.
    """
    columns = schema.columns if schema is not None else ()
    by_name = {column.name: column for column in columns}
    if len(inputs) == 1 and _is_table(inputs[0], by_name, len(columns)):
        return _table_columns(inputs[0], columns)
    return _named_columns(inputs, schema, by_name)


def _is_table(tensor: RequestInput, by_name: dict[str, InputColumn], width: int) -> bool:
    shape = tensor.shape
    if len(shape) == 2 and shape[1] != 1:
        return True
    # One unnamed column of a one-feature model is that feature.
    return width == 1 and tensor.name not in by_name and len(shape) in (1, 2)


def _table_columns(tensor: RequestInput, columns: Sequence[InputColumn]) -> tuple[Columns, int]:
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
    if not columns:
        return {j: values[j::width] for j in range(width)}, n
    table: Columns = {}
    for j, column in enumerate(columns):
        # A strided slice is that one column of the row-major data.
        part = values[j::width]
        if _needs_decoding(tensor, column.type):
            part = _decode_bytes(0, tensor, part, column.type)
        table[column.name] = part
    return table, n


def _named_columns(
    inputs: Sequence[RequestInput], schema: InputSchema | None, by_name: dict[str, InputColumn]
) -> tuple[Columns, int]:
    data: Columns = {}
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
    if schema is not None and all(c.name in data or not c.required for c in schema.columns):
        # Absent optional features are nulls, as in /predict; in signature order, which is what
        # the compiled path takes as it is.
        nulls = [None] * rows
        return {c.name: data.get(c.name, nulls) for c in schema.columns}, rows
    return data, rows


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
def wanted_outputs(requested: list[RequestOutput] | None) -> frozenset[str]:
    if not requested:
        return frozenset(OUTPUT_NAMES)
    for j, output in enumerate(requested):
        if output.name not in OUTPUT_NAMES:
            raise Unprocessable(
                f"unknown output {output.name!r}; outputs: {', '.join(OUTPUT_NAMES)}",
                field=f"outputs[{j}].name",
            )
    return frozenset(output.name for output in requested)


def response_outputs(
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
                "datatype": datatype_of(predictions),
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
            output["parameters"] = {"classes": classes_parameter(classes)}
        outputs.append(output)
    return outputs


def datatype_of(values: Sequence[Any]) -> str:
    # Predictions come from one numpy array, so the first non-null value speaks for all.
    first = next((value for value in values if value is not None), None)
    if first is None or type(first) is float:
        return "FP64"
    if type(first) is bool:
        return "BOOL"
    if type(first) is int:
        return "INT64"
    return "BYTES"


def classes_parameter(classes: list[Any]) -> str:
    # The protocol allows only string, number and boolean parameter values (gRPC clients and
    # KServe's converters reject lists), so the labels travel as a JSON array in a string.
    return orjson.dumps(classes).decode()


def _names(columns: Sequence[InputColumn]) -> str:
    names = [c.name for c in columns]
    return ", ".join(names[:10]) + (", …" if len(names) > 10 else "")


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"
