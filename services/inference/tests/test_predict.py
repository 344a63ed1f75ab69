from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from .conftest import without_request_id

pytestmark = pytest.mark.anyio

FEATURES = ["age", "income", "visits", "city", "plan", "member"]


async def test_dict_rows_match_the_pipeline(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:25]
    rows = to_rows(frame)
    # Gaps and a category never seen in training: the pipeline imputes and ignores.
    rows[0]["age"] = None
    rows[3]["city"] = None
    rows[4]["city"] = "marseille"
    del rows[5]["age"]  # optional in the signature (training had gaps): absent means null
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": rows})

    assert response.status_code == 200, response.text
    body = response.json()
    pipeline = artifacts.pipelines["churn-v1"]
    expected = frame.copy()
    expected.loc[expected.index[0], "age"] = np.nan
    expected.loc[expected.index[3], "city"] = np.nan
    expected.loc[expected.index[4], "city"] = "marseille"
    expected.loc[expected.index[5], "age"] = np.nan
    assert body["predictions"] == pipeline.predict(expected).tolist()
    assert body["classes"] == pipeline.classes_.tolist()
    assert np.allclose(body["probabilities"], pipeline.predict_proba(expected))
    assert body["model"] == {"name": "churn", "version": 1, "alias": "champion"}


async def test_list_rows_in_signature_order_give_the_same_answer(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["churn"].iloc[:10])
    as_lists = [[row[name] for name in FEATURES] for row in rows]
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        by_dict = (await svc.post_json("/predict", {"instances": rows})).json()
        by_list = await svc.post_json("/predict", {"instances": as_lists})
    assert by_list.status_code == 200, by_list.text
    assert without_request_id(by_list.json()) == without_request_id(by_dict)


async def test_regressor_has_no_probabilities(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["prices"].iloc[:8]
    gateway.set_alias("prices", 1)
    async with service("prices") as svc:
        await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": to_rows(frame)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["probabilities"] is None
    assert body["classes"] is None
    expected = artifacts.pipelines["prices-v1"].predict(frame)
    assert np.allclose(body["predictions"], expected)
    assert body["model"]["name"] == "prices"


async def test_model_without_signature_takes_objects_as_they_come(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["churn"].iloc[:5]
    gateway.set_alias("bare", 1)
    async with service("bare") as svc:
        assert await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": to_rows(frame)})
        info = (await svc.client.get("/model-info")).json()
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == artifacts.pipelines["churn-v1"].predict(frame).tolist()
    assert info["signature"] is None


GOOD = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}


def _rows(n: int = 5, **changes: Any) -> list[dict[str, Any]]:
    rows = [dict(GOOD) for _ in range(n)]
    rows[-1].update(changes)
    return rows


BAD_INPUTS: list[tuple[str, Any, str, str]] = [
    (
        "string for a number",
        {"instances": _rows(4, age="abc")},
        "instances[3].age",
        "expected a number, got string 'abc'",
    ),
    (
        "boolean for a number",
        {"instances": _rows(1, income=True)},
        "instances[0].income",
        "expected a number, got boolean true",
    ),
    (
        "fractional integer",
        {"instances": _rows(2, visits=2.5)},
        "instances[1].visits",
        "expected an integer, got number 2.5",
    ),
    (
        "number for a string",
        {"instances": _rows(1, plan=5)},
        "instances[0].plan",
        "expected a string, got number 5",
    ),
    (
        "string for a boolean",
        {"instances": _rows(1, member="yes")},
        "instances[0].member",
        "expected a boolean (true or false), got string 'yes'",
    ),
    (
        "missing required features",
        {"instances": [{"age": 40.0, "city": "lyon", "member": True}]},
        "instances[0]",
        "missing features: income, visits, plan",
    ),
    (
        "unknown feature",
        {"instances": _rows(1, x=1)},
        "instances[0]",
        "unknown features: x",
    ),
    (
        "list of the wrong length",
        {"instances": [[40.0, 52000.5, 3, "lyon", "pro"]]},
        "instances[0]",
        "expected 6 values in signature order (age, income, visits, city, plan, member), got 5",
    ),
    (
        "no rows",
        {"instances": []},
        "instances",
        "must contain at least one row",
    ),
    (
        "objects and lists mixed",
        {"instances": [GOOD, list(GOOD.values())]},
        "instances[1]",
        "expected an object like instances[0] (all instances must be the same kind), got a list",
    ),
    (
        "list then object",
        {"instances": [list(GOOD.values()), GOOD]},
        "instances[1]",
        "expected a list like instances[0] (all instances must be the same kind), got an object",
    ),
    (
        "row that is neither object nor list",
        {"instances": [3]},
        "instances[0]",
        "expected an object {feature: value} or a list of values, got number 3",
    ),
    (
        "instances not a list",
        {"instances": {"age": 3}},
        "instances",
        "must be a list of rows",
    ),
    ("no instances", {"rows": []}, "instances", "field required"),
    ("body not an object", [GOOD], "body", "expected an object"),
]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_is_a_422_naming_the_field(
    service: Any, gateway: Any, body: Any, field: str, message: str
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.post_json("/predict", body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]


async def test_malformed_json_is_a_422_naming_the_body(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.post_raw("/predict", b'{"instances": [')
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body"


async def test_many_bad_values_are_reported_together(service: Any, gateway: Any) -> None:
    rows = [dict(GOOD, age="x") for _ in range(30)]
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": rows})
    error = response.json()["error"]
    assert response.status_code == 422
    assert error["field"] == "instances[0].age"
    assert "(and 19 more in details.errors; checking stopped after 20)" in error["message"]
    assert len(error["details"]["errors"]) == 20
    assert error["details"]["errors"][1]["field"] == "instances[1].age"


async def test_too_many_rows_is_refused_naming_instances(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service(max_batch_rows=3) as svc:
        await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": _rows(4)})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "instances"


async def test_predict_and_model_info_are_503_before_a_model_is_loaded(service: Any) -> None:
    async with service() as svc:
        response = await svc.post_json("/predict", {"instances": _rows(1)})
        info = await svc.client.get("/model-info")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "no model loaded" in response.json()["error"]["message"]
    assert info.status_code == 503


async def test_a_body_over_the_size_limit_is_a_413_on_every_route(
    service: Any, gateway: Any
) -> None:
    big = json.dumps({"instances": _rows(40)}).encode()
    assert len(big) > 2048

    async def chunks() -> Any:
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    gateway.set_alias("churn", 1)
    async with service(max_body_bytes=2048) as svc:
        await svc.manager.poll_once()
        declared = await svc.post_raw("/predict", big)
        streamed = await svc.client.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        v2 = await svc.post_raw("/v2/models/churn/infer", big)
        small = await svc.post_json("/predict", {"instances": _rows(1)})
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["field"] == "body"
        assert "INFERENCE_MAX_BODY_BYTES (2048 bytes" in error["message"]
    # Refused from the declared length, or (no length: chunked) once 2048 bytes had arrived.
    assert "Content-Length is" in declared.json()["error"]["message"]
    assert "more than 2048 bytes arrived" in streamed.json()["error"]["message"]
    assert v2.status_code == 413
    assert v2.json()["error"].startswith("body: ")
    assert small.status_code == 200
