"""POST /v1/feedback: labels validated, buffered, and stored as Parquet beside the log."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pytest

from .conftest import CALLER

pytestmark = pytest.mark.anyio

FEEDBACK = "s3://data/feedback/"
PREDICTIONS = "s3://data/predictions/"
KEY = re.compile(
    r"s3://data/feedback/mixed/date=\d{4}-\d\d-\d\d/inference-test-8800-\d{8}T\d{12}Z-\d{6}"
    r"\.parquet"
)


def stored(svc: Any, outcome: str) -> float:
    value = svc.metrics.registry.get_sample_value(
        "inference_feedback_records_total", {"outcome": outcome}
    )
    return float(value or 0.0)


async def test_labels_are_stored_with_their_type_and_join_the_prediction_log(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:2])
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        predicted = await svc.post_json("/predict", {"instances": rows})
        request_id = predicted.json()["request_id"]
        one = await svc.post_json("/v1/feedback", {"request_id": request_id, "label": "stay"})
        many = await svc.post_json(
            "/v1/feedback",
            {"items": [{"request_id": "r-1", "label": 1}, {"request_id": "r-2", "label": 0}]},
        )
    assert (one.status_code, one.json()) == (202, {"accepted": 1})
    assert (many.status_code, many.json()) == (202, {"accepted": 2})
    assert stored(svc, "written") == 3

    uris = svc.records.keys(FEEDBACK)
    assert len(uris) == 2  # one type per file: strings, integers
    assert all(KEY.fullmatch(uri) for uri in uris), uris
    tables = {}
    for uri in uris:
        table = svc.records.table(uri)
        assert table.column_names == ["request_id", "ts", "model", "label"]
        assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
        tables[str(table.schema.field("label").type)] = table
    strings, integers = tables["string"].to_pydict(), tables["int64"].to_pydict()
    assert strings["request_id"] == [request_id]
    assert strings["label"] == ["stay"]
    assert strings["model"] == ["mixed"]
    assert integers["request_id"] == ["r-1", "r-2"]
    assert integers["label"] == [1, 0]

    log = svc.records.table(PREDICTIONS).to_pandas()
    labels = tables["string"].to_pandas()
    joined = log.merge(labels[["request_id", "label"]], on="request_id")
    assert joined["label"].tolist() == ["stay", "stay"]  # both rows of the request


async def test_numbers_with_a_fraction_make_a_float_column(service: Any) -> None:
    async with service("mixed") as svc:
        response = await svc.post_json(
            "/v1/feedback",
            {
                "items": [
                    {"request_id": "a", "label": 1},
                    {"request_id": "b", "label": 2.5},
                    {"request_id": "c", "label": True},
                ]
            },
        )
    assert response.status_code == 202, response.text
    columns = {}
    for uri in svc.records.keys(FEEDBACK):
        table = svc.records.table(uri)
        columns[str(table.schema.field("label").type)] = table.column("label").to_pylist()
    assert columns == {"double": [1.0, 2.5], "bool": [True]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": 1}, "request_id"),
        ({"request_id": "has space", "label": 1}, "request_id"),
        ({"request_id": "x" * 65, "label": 1}, "request_id"),
        ({"request_id": "a"}, "label"),
        ({"request_id": "a", "label": None}, "label"),
        ({"request_id": "a", "label": [1]}, "label"),
        ({"request_id": "a", "label": {"class": 1}}, "label"),
        ({"request_id": "a", "label": "x" * 1025}, "label"),
        ({"request_id": "a", "label": 1, "weight": 2}, "weight"),
        ({"items": []}, "items"),
        ({"items": "all"}, "items"),
        ({"items": [{"request_id": "a", "label": 1}, {"request_id": "b"}]}, "items[1].label"),
        ({"items": [{"request_id": "a", "label": 1}], "label": 2}, "label"),
        ([{"request_id": "a", "label": 1}], "body"),
    ],
)
async def test_invalid_feedback_is_a_422_naming_the_field(
    service: Any, body: Any, field: str
) -> None:
    async with service("mixed") as svc:
        response = await svc.post_json("/v1/feedback", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert svc.records.keys(FEEDBACK) == []


async def test_malformed_json_and_too_many_items(service: Any) -> None:
    items = [{"request_id": f"r{i}", "label": i} for i in range(3)]
    async with service("mixed", feedback_max_items=2) as svc:
        malformed = await svc.post_raw("/v1/feedback", b'{"request_id": ')
        too_many = await svc.post_json("/v1/feedback", {"items": items})
        enough = await svc.post_json("/v1/feedback", {"items": items[:2]})
    assert (malformed.status_code, malformed.json()["error"]["field"]) == (422, "body")
    assert (too_many.status_code, too_many.json()["error"]["field"]) == (422, "items")
    assert "at most 2 items" in too_many.json()["error"]["message"]
    assert enough.status_code == 202


async def test_a_full_buffer_refuses_the_whole_request_with_503(service: Any) -> None:
    items = [{"request_id": f"r{i}", "label": i} for i in range(3)]
    settings = {"prediction_log_max_buffered_rows": 2, "prediction_log_flush_interval_s": 600}
    async with service("mixed", **settings) as svc:
        refused = await svc.post_json("/v1/feedback", {"items": items})
        accepted = await svc.post_json("/v1/feedback", {"items": items[:2]})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert accepted.status_code == 202
    # Refused labels were never accepted: only the two accepted ones are counted.
    assert (stored(svc, "written"), stored(svc, "dropped")) == (2, 0)


async def test_feedback_needs_the_predict_scope_for_the_model(service: Any, gateway: Any) -> None:
    reader = "mlops_" + "r" * 43
    gateway.tokens[reader] = {"active": True, "name": "r", "scopes": ["models:read"], "models": "*"}
    body = {"request_id": "a", "label": 1}
    async with service("mixed") as svc:
        anonymous = await svc.client.post("/v1/feedback", json=body, headers={"Authorization": ""})
        wrong_scope = await svc.client.post(
            "/v1/feedback", json=body, headers={"Authorization": f"Bearer {reader}"}
        )
        allowed = await svc.client.post("/v1/feedback", json=body, headers=CALLER)
    assert anonymous.status_code == 401
    assert wrong_scope.status_code == 403
    assert allowed.status_code == 202


async def test_openapi_documents_feedback_and_request_ids(service: Any) -> None:
    async with service("mixed") as svc:
        spec = (await svc.client.get("/openapi.json")).json()
    post = spec["paths"]["/v1/feedback"]["post"]
    assert {"202", "401", "403", "413", "422", "503"} <= set(post["responses"])
    one_of = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [sorted(schema["required"]) for schema in one_of] == [["label", "request_id"], ["items"]]
    assert "$defs" not in str(one_of)
    predict = spec["paths"]["/predict"]["post"]["responses"]["200"]
    assert "X-Request-Id" in predict["headers"]
    assert "request_id" in spec["components"]["schemas"]["PredictResponse"]["required"]
