"""Open Inference Protocol v2 endpoints, driven in-process like a V2 client would."""

from __future__ import annotations

import base64
import json
import math
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from inference.v2.codec import decode_inputs
from inference.v2.schemas import RequestInput
from inference.validation import InputColumn, InputSchema, build_frame_from_columns

from .conftest import without_request_id

pytestmark = pytest.mark.anyio

FEATURES = ["age", "income", "visits", "city", "plan", "member"]
DATATYPES = {
    "age": "FP64",
    "income": "FP64",
    "visits": "INT64",
    "city": "BYTES",
    "plan": "BYTES",
    "member": "BOOL",
}
INFER = "/v2/models/churn/infer"


def v2_error(response: Any) -> dict[str, str]:
    """V2 clients get ``{"error": "<field>: <message>"}``: split it back for the assertions."""
    text = response.json()["error"]
    assert isinstance(text, str), text
    return {"field": text.split(": ", 1)[0], "message": text}


def column_inputs(rows: list[dict[str, Any]], *, nested: tuple[str, ...] = ()) -> list[Any]:
    """One input per feature; those in ``nested`` as [n, 1] with nested data, like MLServer."""
    inputs = []
    for name in FEATURES:
        values = [row.get(name) for row in rows]
        shape: list[int]
        data: list[Any]
        if name in nested:
            shape, data = [len(rows), 1], [[v] for v in values]
        else:
            shape, data = [len(rows)], values
        inputs.append({"name": name, "datatype": DATATYPES[name], "shape": shape, "data": data})
    return inputs


def output(body: dict[str, Any], name: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [o for o in body["outputs"] if o["name"] == name]
    assert len(matches) == 1, body
    return matches[0]


def as_numpy(out: dict[str, Any]) -> np.ndarray[Any, Any]:
    """What tritonclient's InferResult.as_numpy does with a JSON output."""
    dtypes: dict[str, Any] = {"FP64": np.float64, "INT64": np.int64, "BOOL": bool}
    return np.array(out["data"], dtype=dtypes.get(out["datatype"], np.object_)).reshape(
        out["shape"]
    )


# ---- health and metadata ------------------------------------------------------------------------
async def test_live_and_ready_before_and_after_the_model_loads(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        live = await svc.client.get("/v2/health/live")
        ready = await svc.client.get("/v2/health/ready")
        model_ready = await svc.client.get("/v2/models/churn/ready")
        metadata = await svc.client.get("/v2/models/churn")
        inference = await svc.post_json(INFER, {"inputs": column_inputs([{"age": 1.0}])})

        assert await svc.manager.poll_once()
        live_after = await svc.client.get("/v2/health/live")
        ready_after = await svc.client.get("/v2/health/ready")
        model_ready_after = await svc.client.get("/v2/models/churn/ready")
        version_ready = await svc.client.get("/v2/models/churn/versions/1/ready")
        other_version = await svc.client.get("/v2/models/churn/versions/2/ready")
        other_name = await svc.client.get("/v2/models/prices/ready")

    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert ready.headers["retry-after"]
    assert (model_ready.status_code, model_ready.json()) == (503, {"name": "churn", "ready": False})
    assert metadata.status_code == 503
    assert inference.status_code == 503
    assert "no model loaded" in v2_error(inference)["message"]

    assert (live_after.status_code, live_after.json()) == (200, {"live": True})
    assert (ready_after.status_code, ready_after.json()) == (200, {"ready": True})
    assert model_ready_after.json() == {"name": "churn", "ready": True}
    assert version_ready.status_code == 200
    assert other_version.status_code == 404
    assert v2_error(other_version)["field"] == "version"
    assert other_name.status_code == 404
    assert v2_error(other_name)["field"] == "name"


async def test_server_metadata(service: Any) -> None:
    async with service() as svc:
        response = await svc.client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {
        "name": "inference",
        "version": version("inference"),
        "extensions": ["binary_tensor_data"],
    }


async def test_classifier_metadata(service: Any, gateway: Any, artifacts: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        by_name = await svc.client.get("/v2/models/churn")
        by_version = await svc.client.get("/v2/models/churn/versions/1")
        wrong_version = await svc.client.get("/v2/models/churn/versions/2")
        wrong_name = await svc.client.get("/v2/models/nope")

    assert by_name.status_code == 200, by_name.text
    body = by_name.json()
    assert by_version.json() == body
    assert body["name"] == "churn"
    assert body["versions"] == ["1"]
    assert body["platform"] == "sklearn"
    assert body["inputs"] == [
        {"name": name, "datatype": DATATYPES[name], "shape": [-1]} for name in FEATURES
    ]
    predict, proba = body["outputs"]
    assert predict == {"name": "predict", "datatype": "BYTES", "shape": [-1]}
    classes = artifacts.pipelines["churn-v1"].classes_.tolist()
    assert proba["name"] == "predict_proba"
    assert proba["datatype"] == "FP64"
    assert proba["shape"] == [-1, len(classes)]
    assert json.loads(proba["parameters"]["classes"]) == classes

    assert wrong_version.status_code == 404
    error = v2_error(wrong_version)
    assert error["field"] == "version"
    assert "version 1 is" in error["message"]
    assert wrong_name.status_code == 404
    assert v2_error(wrong_name)["field"] == "name"


async def test_openapi_documents_the_v2_routes(service: Any) -> None:
    async with service() as svc:
        spec = (await svc.client.get("/openapi.json")).json()
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}/infer"} <= set(spec["paths"])
    assert "422" in spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]


# ---- inference ----------------------------------------------------------------------------------
async def test_column_inputs_answer_like_predict(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["churn"].iloc[:20])
    rows[3]["city"] = None  # a null in a BYTES column is a missing value
    rows[4]["age"] = None
    request = {
        "id": "req-7",
        "parameters": {"content_type": "pd"},
        "inputs": column_inputs(rows, nested=("city", "visits")),
    }
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        expected = (await svc.post_json("/predict", {"instances": rows})).json()
        response = await svc.post_json(INFER, request)
        by_version = await svc.post_json("/v2/models/churn/versions/1/infer", request)

    assert response.status_code == 200, response.text
    body = response.json()
    assert by_version.json() == body
    assert body["model_name"] == "churn"
    assert body["model_version"] == "1"
    assert body["id"] == "req-7"
    assert body["parameters"] == {"alias": "champion"}
    predict = output(body, "predict")
    assert predict["datatype"] == "BYTES"
    assert predict["shape"] == [20]
    assert predict["data"] == expected["predictions"]
    proba = output(body, "predict_proba")
    assert proba["datatype"] == "FP64"
    assert proba["shape"] == [20, 2]
    assert np.allclose(as_numpy(proba), expected["probabilities"])
    assert json.loads(proba["parameters"]["classes"]) == expected["classes"]


async def test_one_2d_tensor_in_signature_order(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["churn"].iloc[:8])
    rows[2]["city"] = None
    table = [[row[name] for name in FEATURES] for row in rows]
    nested = {"name": "input-0", "datatype": "BYTES", "shape": [8, 6], "data": table}
    flat = dict(nested, data=[value for row in table for value in row])
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        expected = (await svc.post_json("/predict", {"instances": rows})).json()
        by_nested = await svc.post_json(INFER, {"inputs": [nested]})
        by_flat = await svc.post_json(INFER, {"inputs": [flat]})

    assert by_nested.status_code == 200, by_nested.text
    assert without_request_id(by_flat.json()) == without_request_id(by_nested.json())
    body = by_nested.json()
    # No id sent: the platform's request id, as in the header.
    assert body["id"] == by_nested.headers["x-request-id"]
    assert output(body, "predict")["data"] == expected["predictions"]
    assert np.allclose(as_numpy(output(body, "predict_proba")), expected["probabilities"])


async def test_outputs_filter(service: Any, gateway: Any, artifacts: Any, to_rows: Any) -> None:
    rows = to_rows(artifacts.frames["churn"].iloc[:3])
    inputs = column_inputs(rows)
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        proba_only = await svc.post_json(
            INFER, {"inputs": inputs, "outputs": [{"name": "predict_proba"}]}
        )
        predict_only = await svc.post_json(
            INFER, {"inputs": inputs, "outputs": [{"name": "predict", "parameters": {}}]}
        )
        unknown = await svc.post_json(
            INFER, {"inputs": inputs, "outputs": [{"name": "predict"}, {"name": "scores"}]}
        )

    assert [o["name"] for o in proba_only.json()["outputs"]] == ["predict_proba"]
    assert [o["name"] for o in predict_only.json()["outputs"]] == ["predict"]
    assert unknown.status_code == 422
    error = v2_error(unknown)
    assert error["field"] == "outputs[1].name"
    assert "'scores'" in error["message"]


async def test_wrong_model_name_or_version_is_a_404(service: Any, gateway: Any) -> None:
    inputs = column_inputs([{"age": 40.0}])
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        wrong_name = await svc.post_json("/v2/models/prices/infer", {"inputs": inputs})
        wrong_version = await svc.post_json("/v2/models/churn/versions/3/infer", {"inputs": inputs})
    assert wrong_name.status_code == 404
    assert v2_error(wrong_name)["field"] == "name"
    assert "'churn'" in v2_error(wrong_name)["message"]
    assert wrong_version.status_code == 404
    assert v2_error(wrong_version)["field"] == "version"
    assert "version 1 is" in v2_error(wrong_version)["message"]


GOOD = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}


def _inputs(**changes: Any) -> list[Any]:
    inputs = column_inputs([GOOD, GOOD])
    for key, value in changes.items():
        index, field = key.rsplit("_", 1)
        inputs[FEATURES.index(index)][field] = value
    return inputs


BAD_REQUESTS: list[tuple[str, Any, str, str]] = [
    (
        "shape does not match data",
        {"inputs": _inputs(age_shape=[3])},
        "inputs[0].shape",
        "shape [3] holds 3 values, data has 2",
    ),
    (
        "unknown datatype",
        {"inputs": _inputs(income_datatype="FLOAT64")},
        "inputs[1].datatype",
        "unknown datatype 'FLOAT64'",
    ),
    (
        "missing required features",
        {"inputs": [i for i in _inputs() if i["name"] in ("age", "city", "member")]},
        "instances[0]",
        "missing features: income, visits, plan",
    ),
    (
        "bad value, reported like /predict",
        {"inputs": _inputs(age_data=[1.0, "abc"])},
        "instances[1].age",
        "expected a number, got string 'abc'",
    ),
    (
        "unknown input name",
        {"inputs": [*_inputs(), {"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 2]}]},
        "inputs[6].name",
        "'x' is not an input of the model",
    ),
    (
        "input given twice",
        {"inputs": [*_inputs(), _inputs()[0]]},
        "inputs[6].name",
        "given twice",
    ),
    (
        "columns of different lengths",
        {"inputs": _inputs(plan_shape=[1], plan_data=["pro"])},
        "inputs[4].shape",
        "same number of rows",
    ),
    (
        "feature that is not a column",
        {"inputs": _inputs(city_shape=[1, 2], city_data=[["a", "b"]])},
        "inputs[3].shape",
        "a feature input must be [n] or [n, 1], got [1, 2]",
    ),
    (
        "2-D tensor of the wrong width",
        {"inputs": [{"name": "t", "shape": [1, 5], "datatype": "FP64", "data": [1, 2, 3, 4, 5]}]},
        "inputs[0].shape",
        "a single tensor must be [n, 6]",
    ),
    (
        "nested data that does not match the shape",
        {"inputs": [{"name": "t", "shape": [2, 6], "datatype": "BYTES", "data": [[1] * 6, [1]]}]},
        "inputs[0].data",
        "nested data does not match shape [2, 6]",
    ),
    (
        "zero rows",
        {"inputs": [{"name": "age", "shape": [0], "datatype": "FP64", "data": []}]},
        "inputs[0].shape",
        "at least one row",
    ),
    (
        "invalid base64",
        {"inputs": _inputs(city_parameters={"content_type": "base64"}, city_data=["%%", "a"])},
        "inputs[3].data",
        "not base64-encoded",
    ),
    ("no inputs", {"inputs": []}, "inputs", "at least 1 item"),
    ("inputs not a list", {"inputs": {"name": "age"}}, "inputs", "valid list"),
    ("shape not a list", {"inputs": _inputs(age_shape=3)}, "inputs.0.shape", "valid list"),
    (
        "data missing",
        {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64"}]},
        "inputs.0.data",
        "Field required",
    ),
    ("body not an object", [GOOD], "body", "valid dictionary"),
]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_requests_are_a_422_naming_the_field(
    service: Any, gateway: Any, body: Any, field: str, message: str
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.post_json(INFER, body)
    assert response.status_code == 422, response.text
    error = v2_error(response)
    assert error["field"] == field
    assert message in error["message"]


async def test_malformed_json_is_a_422_naming_the_body(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.post_raw(INFER, b'{"inputs": [')
    assert response.status_code == 422
    assert v2_error(response)["field"] == "body"


async def test_too_many_rows_is_a_413(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service(max_batch_rows=1) as svc:
        await svc.manager.poll_once()
        response = await svc.post_json(INFER, {"inputs": _inputs()})
    assert response.status_code == 413
    assert v2_error(response)["field"] == "instances"


async def test_regressor_has_no_predict_proba(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["prices"].iloc[:6]
    rows = to_rows(frame)
    inputs = [
        {"name": name, "datatype": DATATYPES[name], "shape": [6], "data": [r[name] for r in rows]}
        for name in frame.columns
    ]
    gateway.set_alias("prices", 1)
    async with service("prices") as svc:
        await svc.manager.poll_once()
        metadata = (await svc.client.get("/v2/models/prices")).json()
        response = await svc.post_json("/v2/models/prices/infer", {"inputs": inputs})
        asked_proba = await svc.post_json(
            "/v2/models/prices/infer", {"inputs": inputs, "outputs": [{"name": "predict_proba"}]}
        )

    assert metadata["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    assert [i["name"] for i in metadata["inputs"]] == list(frame.columns)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [o["name"] for o in body["outputs"]] == ["predict"]
    predict = output(body, "predict")
    assert predict["datatype"] == "FP64"
    assert predict["shape"] == [6]
    assert np.allclose(predict["data"], artifacts.pipelines["prices-v1"].predict(frame))
    assert asked_proba.status_code == 422
    assert v2_error(asked_proba)["field"] == "outputs[0].name"


async def test_model_without_signature(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:5]
    rows = to_rows(frame)
    gateway.set_alias("bare", 1)
    async with service("bare") as svc:
        await svc.manager.poll_once()
        metadata = (await svc.client.get("/v2/models/bare")).json()
        response = await svc.post_json("/v2/models/bare/infer", {"inputs": column_inputs(rows)})
    assert metadata["inputs"] == []
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba"]
    assert response.status_code == 200, response.text
    expected = artifacts.pipelines["churn-v1"].predict(frame).tolist()
    assert output(response.json(), "predict")["data"] == expected


async def test_base64_bytes(service: Any, gateway: Any, artifacts: Any, to_rows: Any) -> None:
    rows = to_rows(artifacts.frames["churn"].iloc[:4])
    plain = column_inputs(rows)
    encoded = column_inputs(rows)
    city = encoded[FEATURES.index("city")]
    city["parameters"] = {"content_type": "base64"}
    city["data"] = [
        None if v is None else base64.b64encode(v.encode()).decode() for v in city["data"]
    ]
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        by_plain = (await svc.post_json(INFER, {"inputs": plain})).json()
        by_base64 = await svc.post_json(INFER, {"inputs": encoded})
    assert by_base64.status_code == 200, by_base64.text
    assert without_request_id(by_base64.json()) == without_request_id(by_plain)


# ---- what real clients send ---------------------------------------------------------------------
TRITON_DATATYPES = {"float64": "FP64", "int64": "INT64", "bool": "BOOL", "object": "BYTES"}


def _triton_inputs(columns: dict[str, np.ndarray[Any, Any]], *, binary: bool) -> list[Any]:
    inputs = []
    for name, array in columns.items():
        tensor = triton.InferInput(name, list(array.shape), TRITON_DATATYPES[array.dtype.name])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _tritonclient_body(columns: dict[str, np.ndarray[Any, Any]], request_id: str) -> bytes:
    """The body tritonclient.http builds from set_data_from_numpy(array, binary_data=False) per
    column, with InferRequestedOutput(name, binary_data=False) for both outputs.

    It serialises with rapidjson: NaN as a bare ``NaN`` token, BYTES from an object array as
    ``str(item)``.
    """
    outputs = [
        triton.InferRequestedOutput("predict", binary_data=False),
        triton.InferRequestedOutput("predict_proba", binary_data=False),
    ]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        _triton_inputs(columns, binary=False), outputs=outputs, request_id=request_id
    )
    assert json_size is None  # all JSON
    return bytes(body)


def _churn_columns(frame: Any) -> dict[str, np.ndarray[Any, Any]]:
    columns = {
        name: frame[name].to_numpy().reshape(-1, 1)
        for name in FEATURES
        if name not in ("city", "plan")
    }
    # String columns as object arrays: the only way tritonclient takes BYTES from numpy.
    columns["city"] = frame["city"].to_numpy(dtype=object).reshape(-1, 1)
    columns["plan"] = frame["plan"].to_numpy(dtype=object).reshape(-1, 1)
    return columns


async def _post_triton(svc: Any, body: bytes, json_size: int | None) -> Any:
    """POST as tritonclient does and read the answer with tritonclient's own parser."""
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    response = await svc.client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    header = response.headers.get("inference-header-content-length")
    return triton.InferenceServerClient.parse_response_body(
        response.content, header_length=None if header is None else int(header)
    )


async def test_tritonclient_defaults_binary_tensors_both_ways(
    service: Any, gateway: Any, artifacts: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:12].copy()
    # Binary FP64 data has no missing value: NaN bytes are refused (see the test below).
    frame["age"] = frame["age"].fillna(40.0)
    frame["city"] = frame["city"].fillna("paris")
    columns = _churn_columns(frame)
    # tritonclient's defaults: binary inputs, no outputs named, so every output comes back binary.
    body, json_size = triton.InferenceServerClient.generate_request_body(
        _triton_inputs(columns, binary=True), request_id="bin-1"
    )
    assert json_size is not None and json_size < len(body)

    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        result = await _post_triton(svc, bytes(body), json_size)
        # Binary inputs and JSON outputs, mixed per output, also work.
        outputs = [
            triton.InferRequestedOutput("predict", binary_data=False),
            triton.InferRequestedOutput("predict_proba", binary_data=True),
        ]
        mixed_body, mixed_size = triton.InferenceServerClient.generate_request_body(
            _triton_inputs(columns, binary=True), outputs=outputs
        )
        mixed = await _post_triton(svc, bytes(mixed_body), mixed_size)

    pipeline = artifacts.pipelines["churn-v1"]
    assert result.get_response()["id"] == "bin-1"
    predict = result.as_numpy("predict")
    assert [v.decode() for v in predict.ravel()] == pipeline.predict(frame).tolist()
    np.testing.assert_allclose(result.as_numpy("predict_proba"), pipeline.predict_proba(frame))
    assert mixed.as_numpy("predict").tolist() == pipeline.predict(frame).tolist()
    np.testing.assert_allclose(mixed.as_numpy("predict_proba"), pipeline.predict_proba(frame))


def _binary_header(name: str, datatype: str, size: int) -> bytes:
    """The JSON part of a binary-data request with one [1] input of ``size`` bytes."""
    tensor = {
        "name": name,
        "shape": [1],
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    ("header_length", "tail", "field", "message"),
    [
        ("abc", b"", "Inference-Header-Content-Length", "must be an integer"),
        ("100000", b"", "Inference-Header-Content-Length", "must be between 1 and"),
        (None, b"\x00" * 7, "inputs[0].parameters.binary_data_size", "not a whole number"),
        (None, b"\x00" * 4, "inputs[0].parameters.binary_data_size", "does not fit"),
        (None, b"\x00" * 16, "body", "8 bytes after the last binary input"),
    ],
    ids=["not-a-number", "too-long", "partial-value", "short", "trailing-bytes"],
)
async def test_broken_binary_bodies_are_a_422_naming_the_field(
    service: Any, gateway: Any, header_length: str | None, tail: bytes, field: str, message: str
) -> None:
    size = 7 if "whole number" in message else 8
    header = _binary_header("age", "FP64", size)
    headers = {"Inference-Header-Content-Length": header_length or str(len(header))}
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.post(INFER, content=header + tail, headers=headers)
    assert response.status_code == 422, response.text
    error = v2_error(response)
    assert error["field"] == field
    assert message in error["message"]


async def test_binary_strings_must_be_utf8(service: Any, gateway: Any) -> None:
    blob = (2).to_bytes(4, "little") + b"\xff\xfe"
    header = _binary_header("city", "BYTES", len(blob))
    headers = {"Inference-Header-Content-Length": str(len(header))}
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.post(INFER, content=header + blob, headers=headers)
    assert response.status_code == 422, response.text
    error = v2_error(response)
    assert error["field"] == "inputs[0].data"
    assert "not UTF-8" in error["message"]


async def test_request_as_tritonclient_sends_it(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:12].copy()
    frame.loc[frame.index[0], "age"] = np.nan  # sent as a bare NaN token: a missing value
    expected_frame = frame.assign(city=frame["city"].fillna("paris"))
    body = _tritonclient_body(_churn_columns(expected_frame), request_id="triton-1")
    assert b"NaN" in body

    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        # tritonclient.http posts without a Content-Type header.
        response = await svc.client.post(INFER, content=body)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "triton-1"
    pipeline = artifacts.pipelines["churn-v1"]
    predict = as_numpy(output(result, "predict"))
    assert predict.tolist() == pipeline.predict(expected_frame).tolist()
    proba = as_numpy(output(result, "predict_proba"))
    assert proba.shape == (12, 2)
    assert np.allclose(proba, pipeline.predict_proba(expected_frame))


async def test_2d_object_array_as_tritonclient_sends_it(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    # A mixed-type table as one numpy object array: tritonclient sends every cell as str().
    frame = artifacts.frames["churn"].iloc[:6].copy()
    frame.loc[frame.index[1], "age"] = np.nan
    frame["city"] = frame["city"].fillna("nice")
    table = frame[FEATURES].to_numpy(dtype=object)
    body = _tritonclient_body({"INPUT0": table}, request_id="t2")
    assert b'"nan"' in body

    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        expected = (await svc.post_json("/predict", {"instances": to_rows(frame)})).json()
        response = await svc.client.post(INFER, content=body)

    assert response.status_code == 200, response.text
    result = response.json()
    assert output(result, "predict")["data"] == expected["predictions"]
    assert np.allclose(as_numpy(output(result, "predict_proba")), expected["probabilities"])


async def test_curl_form_content_type_is_read_as_json(service: Any, gateway: Any) -> None:
    # `curl -d @request.json` labels the body application/x-www-form-urlencoded.
    body = json.dumps({"inputs": _inputs()}).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text


# ---- tensors -> columns, without a model -----------------------------------------------------------
SCHEMA = InputSchema(
    (
        InputColumn("a", "double"),
        InputColumn("b", "string", required=False),
        InputColumn("c", "long"),
    )
)


def _tensor(name: str, shape: list[int], datatype: str, data: list[Any], **kw: Any) -> RequestInput:
    return RequestInput(name=name, shape=shape, datatype=datatype, data=data, **kw)


def test_columns_come_in_signature_order_with_absent_optionals_null() -> None:
    columns, rows = decode_inputs(
        [_tensor("c", [2, 1], "INT64", [[1], [2]]), _tensor("a", [2], "FP32", [0.5, None])],
        SCHEMA,
    )
    assert rows == 2
    assert columns == {"a": [0.5, None], "b": [None, None], "c": [1, 2]}
    assert list(columns) == ["a", "b", "c"]
    frame = build_frame_from_columns(columns, rows, SCHEMA)
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame["a"].tolist()[0] == 0.5 and np.isnan(frame["a"].tolist()[1])
    assert frame["b"].isna().all()
    assert frame["c"].tolist() == [1, 2]


def test_table_becomes_columns_and_bytes_numbers_are_parsed() -> None:
    columns, rows = decode_inputs(
        [_tensor("x", [2, 3], "BYTES", ["1.5", "u", "7", "nan", None, "8"])], SCHEMA
    )
    assert rows == 2
    assert columns["a"][0] == 1.5
    assert np.isnan(columns["a"][1])
    assert columns["b"] == ["u", None]
    assert columns["c"] == [7, 8]


def test_binary_columns_get_base64_as_predict_takes_them() -> None:
    schema = InputSchema((InputColumn("blob", "binary"),))
    plain = decode_inputs([_tensor("blob", [1], "BYTES", ["hi"])], schema)
    encoded = decode_inputs(
        [_tensor("blob", [1], "BYTES", ["aGk="], parameters={"content_type": "base64"})], schema
    )
    assert plain == encoded == ({"blob": ["aGk="]}, 1)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP64", math.nan), ("FP64", math.inf), ("FP32", -math.inf), ("FP32", math.nan)],
    ids=["fp64-nan", "fp64-inf", "fp32-minus-inf", "fp32-nan"],
)
async def test_binary_non_finite_numbers_are_a_422_naming_the_input(
    service: Any, gateway: Any, datatype: str, value: float
) -> None:
    # Re-encoded as JSON they used to become null: a missing value, scored as such.
    columns = _churn_columns(pd.DataFrame([GOOD, GOOD]))
    numpy_type = {"FP32": np.float32, "FP64": np.float64}[datatype]
    columns["income"] = np.array([[50_000.0], [value]], dtype=numpy_type)
    kinds = {**TRITON_DATATYPES, "float32": "FP32"}
    tensors = []
    for name, array in columns.items():
        tensor = triton.InferInput(name, list(array.shape), kinds[array.dtype.name])
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    body, json_size = triton.InferenceServerClient.generate_request_body(tensors)
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.post(
            INFER, content=bytes(body), headers={"Inference-Header-Content-Length": str(json_size)}
        )
    assert response.status_code == 422, response.text
    error = v2_error(response)
    assert error["field"] == f"inputs[{FEATURES.index('income')}].data"
    assert "'income'" in error["message"]
    assert f"element 1 is {value}" in error["message"]


def _binary_body(name: str, shape: list[int], datatype: str, blob: bytes) -> tuple[bytes, str]:
    tensor = {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": len(blob)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + blob, str(len(header))


SHAPE_CASES: list[tuple[str, list[int], bytes, str, str]] = [
    ("zero rows", [0], b"", "inputs[0].shape", "at least one row"),
    ("zero rows, 2-D", [0, 6], b"", "inputs[0].shape", "at least one row"),
    ("zero columns", [2, 0], b"", "inputs[0].shape", "at least one column"),
    ("zero columns, one row", [1, 0], b"", "inputs[0].shape", "at least one column"),
    ("negative", [-1], b"", "inputs[0].shape", "at least one row"),
    ("negative width", [2, -3], b"", "inputs[0].shape", ""),
    ("3-D", [1, 1, 1], b"\x00" * 8, "inputs[0].shape", ""),
    ("scalar", [], b"\x00" * 8, "inputs[0].shape", ""),
    ("more values than the shape", [1], b"\x00" * 16, "inputs[0].shape", "holds 1 values"),
    ("huge shape", [2**62, 2**62], b"\x00" * 8, "inputs[0].shape", ""),
]


@pytest.mark.parametrize("model", ["churn", "bare"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(
    ("shape", "blob", "field", "message"),
    [case[1:] for case in SHAPE_CASES],
    ids=[case[0] for case in SHAPE_CASES],
)
async def test_empty_and_broken_shapes_are_a_4xx_naming_the_field(
    service: Any,
    gateway: Any,
    model: str,
    binary: bool,
    shape: list[int],
    blob: bytes,
    field: str,
    message: str,
) -> None:
    name = "age" if model == "churn" else "t"
    if binary:
        content, length = _binary_body(name, shape, "FP64", blob)
        headers = {"Inference-Header-Content-Length": length}
    else:
        data = np.frombuffer(blob, dtype="<f8").tolist()
        content = json.dumps(
            {"inputs": [{"name": name, "shape": shape, "datatype": "FP64", "data": data}]}
        ).encode()
        headers = {"content-type": "application/json"}
    gateway.set_alias(model, 1)
    async with service(model) as svc:
        await svc.manager.poll_once()
        response = await svc.client.post(
            f"/v2/models/{model}/infer", content=content, headers=headers
        )
    assert 400 <= response.status_code < 500, response.text
    error = v2_error(response)
    assert error["field"] == field
    assert message in error["message"]


async def test_the_openapi_documents_v2_errors_as_the_one_string_they_are(
    service: Any, gateway: Any
) -> None:
    """Schemathesis found V2 errors documented as /predict's object: they are a string."""
    from inference.v2.schemas import V2Error

    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        spec = (await svc.client.get("/openapi.json")).json()
        missing = await svc.client.get("/v2/models/prices/versions/1")
        empty = {"name": "", "datatype": "", "shape": [], "data": []}
        invalid = await svc.post_json(INFER, {"inputs": [empty]})

    for path, item in spec["paths"].items():
        if not path.startswith("/v2/") or "/health/" in path:
            continue
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                # FastAPI's own 422 (any object) stays on routes without a body.
                if status[0] in "45" and (status != "422" or path.endswith("/infer")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/V2Error"), (method, path, status, ref)
    assert missing.status_code == 404
    assert invalid.status_code == 422
    for response in (missing, invalid):
        V2Error.model_validate(response.json())
