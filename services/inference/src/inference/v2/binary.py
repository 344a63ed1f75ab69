"""Triton's binary tensor data extension of the V2 REST API: what tritonclient sends by default.

A request carrying ``Inference-Header-Content-Length: N`` is N bytes of JSON followed by the raw
bytes of every input whose ``parameters`` hold ``binary_data_size``, in input order: numbers
little-endian, BOOL one byte each, BYTES as a 4-byte little-endian length before each element.
Outputs go back the same way when asked for (``binary_data: true`` on a requested output, or
``binary_data_output: true`` on the request, which tritonclient sets when it names no outputs).

The binary inputs are turned into the JSON ``data`` the rest of the V2 code reads, so both forms
share one validation and one scoring path.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
from mlops_common.errors import Unprocessable

from inference.v2.schemas import InferenceRequest

HEADER = "inference-header-content-length"
EXTENSION = "binary_tensor_data"

NUMPY_TYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")


def unpack_request(raw: bytes, header_length: str) -> bytes:
    """The request as plain JSON: each binary input's values moved into its ``data``."""
    field = "Inference-Header-Content-Length"
    try:
        json_size = int(header_length)
    except ValueError:
        raise Unprocessable(f"must be an integer, got {header_length!r}", field=field) from None
    if not 0 < json_size <= len(raw):
        raise Unprocessable(
            f"must be between 1 and the body's {len(raw)} bytes, got {json_size}", field=field
        )
    try:
        request = orjson.loads(raw[:json_size])
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"malformed JSON header: {exc}", field="body") from exc
    inputs = request.get("inputs") if isinstance(request, dict) else None
    offset = json_size
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        if type(size) is not int or size < 0 or offset + size > len(raw):
            raise Unprocessable(
                f"binary_data_size {size!r} does not fit the {len(raw) - offset} bytes left "
                "after the header and the inputs before it",
                field=f"inputs[{i}].parameters.binary_data_size",
            )
        tensor["data"] = _values(i, tensor, raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise Unprocessable(
            f"{len(raw) - offset} bytes after the last binary input belong to no input",
            field="body",
        )
    return orjson.dumps(request)


def _values(i: int, tensor: dict[str, Any], chunk: bytes) -> list[Any]:
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        return _strings(i, chunk)
    dtype = NUMPY_TYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise Unprocessable(
            f"unknown datatype {datatype!r} for binary data", field=f"inputs[{i}].datatype"
        )
    if len(chunk) % dtype.itemsize:
        raise Unprocessable(
            f"{len(chunk)} bytes is not a whole number of {datatype} values "
            f"({dtype.itemsize} bytes each)",
            field=f"inputs[{i}].parameters.binary_data_size",
        )
    array = np.frombuffer(chunk, dtype=dtype)
    if dtype.kind == "f":
        _check_finite(i, tensor, array)
    values: list[Any] = array.tolist()
    return values


def _check_finite(i: int, tensor: dict[str, Any], array: np.ndarray[Any, Any]) -> None:
    """Refuse NaN and infinities, as ``/predict`` refuses non-finite numbers.

    Re-encoded as JSON they would become null, a missing value: a model would silently score
    an infinity as a gap. Binary data has no missing value; JSON ``data`` has null for that.
    """
    bad = np.flatnonzero(~np.isfinite(array))
    if not bad.size:
        return
    first = int(bad[0])
    raise Unprocessable(
        f"input {tensor.get('name')!r}: element {first} is {float(array[first])}"
        f"{f' (and {bad.size - 1} more)' if bad.size > 1 else ''}; expected finite numbers "
        f"(binary {tensor.get('datatype')} data cannot hold a missing value: send this input "
        "as JSON data with null for missing values)",
        field=f"inputs[{i}].data",
    )


def _strings(i: int, chunk: bytes) -> list[Any]:
    values: list[Any] = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise Unprocessable(
                "BYTES data ends inside an element's 4-byte length", field=f"inputs[{i}].data"
            )
        (length,) = _LENGTH.unpack_from(chunk, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > len(chunk):
            raise Unprocessable(
                f"BYTES element {len(values)} claims {length} bytes, {len(chunk) - start} remain",
                field=f"inputs[{i}].data",
            )
        try:
            values.append(chunk[start:offset].decode())
        except UnicodeDecodeError:
            raise Unprocessable(
                f"BYTES element {len(values)} is not UTF-8 text", field=f"inputs[{i}].data"
            ) from None
    return values


def binary_outputs(request: InferenceRequest, wanted: frozenset[str]) -> frozenset[str]:
    """Names of the outputs to send as binary data."""
    if request.outputs:
        return frozenset(
            output.name
            for output in request.outputs
            if (output.parameters or {}).get("binary_data") is True
        )
    if (request.parameters or {}).get("binary_data_output") is True:
        return wanted
    return frozenset()


def pack_response(response: dict[str, Any], binary: frozenset[str]) -> tuple[bytes, int]:
    """The response body with the ``binary`` outputs' data after the JSON, and the JSON's size."""
    blobs: list[bytes] = []
    for output in response["outputs"]:
        if output["name"] not in binary:
            continue
        blob = _pack(output["datatype"], output.pop("data"))
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(blob)}
        blobs.append(blob)
    header = orjson.dumps(response)
    return header + b"".join(blobs), len(header)


def _pack(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in data:
            encoded = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    return np.asarray(data, dtype=NUMPY_TYPES[datatype]).tobytes()
