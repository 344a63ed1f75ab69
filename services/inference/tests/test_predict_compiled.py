"""/predict on a model the compiled path serves: same answers, same validation as scikit-learn's."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from .conftest import without_request_id

pytestmark = pytest.mark.anyio

GOOD = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro"}


async def test_rows_with_gaps_and_new_categories_match_the_pipeline(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    frame = artifacts.frames["mixed"].iloc[:40]
    rows = to_rows(frame)
    rows[0]["age"] = None
    rows[1]["city"] = None
    rows[2]["plan"] = "enterprise"  # never seen in training
    rows[3]["visits"] = 4.0  # a whole float is an integer
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        assert svc.manager.current is not None and svc.manager.current.compiled
        response = await svc.post_json("/predict", {"instances": rows})
        as_lists = await svc.post_json(
            "/predict", {"instances": [list(row.values()) for row in rows]}
        )

    assert response.status_code == 200, response.text
    expected = frame.copy()
    expected.loc[expected.index[0], "age"] = np.nan
    expected.loc[expected.index[1], "city"] = np.nan
    expected.loc[expected.index[2], "plan"] = "enterprise"
    expected.loc[expected.index[3], "visits"] = 4
    pipeline = artifacts.pipelines["mixed-v1"]
    body = response.json()
    assert body["predictions"] == pipeline.predict(expected).tolist()
    np.testing.assert_allclose(
        body["probabilities"], pipeline.predict_proba(expected), rtol=1e-9, atol=1e-12
    )
    assert without_request_id(as_lists.json()) == without_request_id(body)


@pytest.mark.parametrize(
    ("rows", "field", "message"),
    [
        ([GOOD, {**GOOD, "age": True}], "instances[1].age", "expected a number, got boolean"),
        ([{**GOOD, "income": "52000"}], "instances[0].income", "expected a number, got string"),
        ([{**GOOD, "visits": 2.5}], "instances[0].visits", "expected an integer, got number 2.5"),
        ([{**GOOD, "city": 7}], "instances[0].city", "expected a string, got number 7"),
        ([{**GOOD, "colour": "red"}], "instances[0]", "unknown features: colour"),
        ([{k: v for k, v in GOOD.items() if k != "plan"}], "instances[0]", "missing features"),
        ([], "instances", "must contain at least one row"),
    ],
    ids=[
        "boolean",
        "numeric-string",
        "fractional-integer",
        "number-category",
        "unknown",
        "missing",
        "empty",
    ],
)
async def test_what_the_compiled_path_refuses_is_a_422_naming_the_field(
    service: Any, gateway: Any, rows: list[Any], field: str, message: str
) -> None:
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": rows})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]


async def test_an_overflowing_number_is_a_422(service: Any, gateway: Any) -> None:
    raw = json.dumps({"instances": [GOOD]}).replace("52000.5", "1e400").encode()
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        await svc.manager.poll_once()
        response = await svc.post_raw("/predict", raw)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "body"
    assert "number is infinity" in error["message"].lower()


async def test_too_many_rows_is_a_413_before_scoring(service: Any, gateway: Any) -> None:
    gateway.set_alias("mixed", 1)
    async with service("mixed", max_batch_rows=3) as svc:
        await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": [GOOD] * 4})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "instances"
