"""What train_and_promote sends the trainer, how it reads the trainer's decision, and how it
promotes: an alias move or a rollout through the gateway, then a check of inference."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, ParamValidationError
from mlops_dags import training_tasks
from mlops_dags.training_tasks import (
    ROLLOUT_PARAMS,
    inference_serves,
    job_decision,
    promote,
    rollout_request,
    rollout_settings,
    training_request,
)

PREFIX = "s3://data/processed/breast_cancer/abc-t20-s42"
MANIFEST = {
    "target": "target",
    "train_uri": f"{PREFIX}/train.parquet",
    "test_uri": f"{PREFIX}/test.parquet",
    "manifest_uri": f"{PREFIX}/manifest.json",
}
PARAMS = {
    "model_name": "demo",
    "alias": "champion",
    "algorithm": "",
    "algorithm_params": {},
    "metric": "roc_auc",
    "margin": 0.01,
}


def test_the_job_trains_on_the_train_split_and_compares_on_the_test_split() -> None:
    body = training_request(MANIFEST, PARAMS, "train_and_promote", "manual__2026-12-02")
    assert body["dataset"] == {
        "uri": f"{PREFIX}/train.parquet",
        "test_uri": f"{PREFIX}/test.parquet",
        "target": "target",
    }
    # The trainer decides; the DAG's promote task moves the alias.
    assert body["promote"] == {
        "alias": "champion",
        "metric": "roc_auc",
        "min_improvement": 0.01,
        "move_alias": False,
    }
    assert body["lineage"] == {
        "dag_id": "train_and_promote",
        "dag_run_id": "manual__2026-12-02",
        "etl_manifest": f"{PREFIX}/manifest.json",
    }
    assert body["algorithm"] is None
    assert body["idempotency_key"] == "airflow:train_and_promote:manual__2026-12-02:demo"


def test_the_body_is_a_valid_train_request() -> None:
    trainer = pytest.importorskip("trainer.schemas")
    body = training_request(MANIFEST, PARAMS, "train_and_promote", "manual__2026-12-02")
    trainer.TrainRequest.model_validate(body)


def job(promotion: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "job_id": "j1",
        "model_version": 7,
        "metrics": {"roc_auc": 0.99},
        "promotion": promotion,
    }


def test_the_decision_is_the_trainers() -> None:
    promotion = {
        "alias": "champion",
        "promote": True,
        "moved": False,
        "reason": "promoted: roc_auc 0.9900 beats champion v6 0.9800 by 0.0100",
        "comparison": {"rows_digest": "abc", "rows": 114},
    }
    decision = job_decision(job(promotion), "demo", "champion")
    assert decision["promote"] is True and decision["candidate_version"] == 7
    assert decision["model_name"] == "demo" and decision["alias"] == "champion"
    assert decision["reason"] == promotion["reason"]
    assert decision["comparison"]["rows"] == 114


@pytest.mark.parametrize(
    "promotion",
    [None, {}, {"alias": "other", "promote": True, "reason": "x"}, {"alias": "champion"}],
)
def test_a_job_without_the_comparison_fails_the_run(promotion: dict[str, Any] | None) -> None:
    with pytest.raises(AirflowFailException, match="reported no comparison"):
        job_decision(job(promotion), "demo", "champion")


# ---- rollout instead of an alias move ------------------------------------------------------

ROLLOUT = {
    "weight": 10,
    "guard": {"max_error_rate": 0.01, "max_p99_ms": 50, "min_requests": 500},
    "sticky_header": "X-User-Id",
    "mirror": None,
}
ROLLOUT_RUN = {
    **PARAMS,
    "rollout": ROLLOUT,
    "rollout_alias": "challenger",
    "inference_conn_id": "inference_api",
}
DECISION: dict[str, Any] = {
    "model_name": "demo",
    "alias": "champion",
    "candidate_version": 7,
    "promote": True,
    "reason": "promoted: roc_auc 0.9900 beats champion v6 0.9800 by 0.0100",
}


class FakeService:
    """One service behind ``service_client``: answers from ``routes`` ("METHOD /path" ->
    (status, JSON)), records every request."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def client(self, conn_id: str, timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url="http://service", transport=httpx.MockTransport(self.answer))

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.routes.get(f"{request.method} {request.url.path}", (404, {}))
        return httpx.Response(status, json=body)

    def sent(self, method: str, path: str) -> list[dict[str, Any]]:
        return [
            json.loads(r.content)
            for r in self.requests
            if r.method == method and r.url.path == path
        ]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, tuple[int, Any]]], FakeService]:
    def install(routes: dict[str, tuple[int, Any]]) -> FakeService:
        fake = FakeService(routes)
        monkeypatch.setattr(training_tasks, "service_client", fake.client)
        return fake

    return install


def moved(alias: str, version: int, previous: int | None) -> tuple[int, dict[str, Any]]:
    return 200, {"name": "demo", "alias": alias, "version": version, "previous_version": previous}


def run_promote(params: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = promote.function(DECISION, params=params, run_id="manual__1")
    return result


def test_the_rollout_body_splits_champion_and_the_new_alias() -> None:
    body = rollout_request({**ROLLOUT, "alias": "challenger"}, DECISION["reason"])
    assert body == {
        "variants": [{"alias": "champion", "weight": 90}, {"alias": "challenger", "weight": 10}],
        "mirror": None,
        "sticky_header": "X-User-Id",
        "guard": {"max_error_rate": 0.01, "max_p99_ms": 50, "min_requests": 500},
        "reason": DECISION["reason"],
    }
    # JSON schema's integer takes 10.0; the gateway's weights are strict integers.
    floats = rollout_request({"weight": 10.0, "alias": "c", "guard": {"min_requests": 5.0}}, "r")
    assert [type(v["weight"]) for v in floats["variants"]] == [int, int]
    assert type(floats["guard"]["min_requests"]) is int


def test_the_rollout_body_is_a_valid_rollout_request() -> None:
    gateway = pytest.importorskip("model_gateway.schemas")
    body = rollout_request({**ROLLOUT, "alias": "challenger"}, DECISION["reason"])
    gateway.RolloutRequest.model_validate_json(json.dumps(body))


def test_promote_moves_the_rollout_alias_then_starts_the_rollout(service: Any) -> None:
    view = {
        "name": "demo",
        "active": True,
        "revision": 1,
        "variants": [
            {"alias": "champion", "weight": 90, "version": 6},
            {"alias": "challenger", "weight": 10, "version": 7},
        ],
    }
    gateway = service(
        {
            "GET /v1/models/demo/aliases/champion": (200, {"name": "demo", "version": 6}),
            "PUT /v1/models/demo/aliases/challenger": moved("challenger", 7, 5),
            "PUT /v1/models/demo/rollout": (200, view),
        }
    )
    promoted = run_promote(ROLLOUT_RUN)
    assert promoted == {"model_name": "demo", "version": 7, "alias": "challenger", "rollout": view}
    assert gateway.sent("PUT", "/v1/models/demo/aliases/challenger") == [
        {"version": 7, "reason": DECISION["reason"]}
    ]
    [body] = gateway.sent("PUT", "/v1/models/demo/rollout")
    assert body["variants"] == [
        {"alias": "champion", "weight": 90},
        {"alias": "challenger", "weight": 10},
    ]
    assert body["reason"] == DECISION["reason"]
    # The alias first (the rollout names aliases), champion never moves; every write audited.
    writes = [r for r in gateway.requests if r.method == "PUT"]
    assert [r.url.path for r in writes] == [
        "/v1/models/demo/aliases/challenger",
        "/v1/models/demo/rollout",
    ]
    assert {r.headers["X-Actor"] for r in writes} == {"airflow:train_and_promote/manual__1"}


def test_a_model_without_a_champion_gets_champion_not_a_rollout(service: Any) -> None:
    gateway = service(
        {
            "GET /v1/models/demo/aliases/champion": (
                404,
                {"detail": "alias 'champion' is not set"},
            ),
            "PUT /v1/models/demo/aliases/champion": moved("champion", 7, None),
        }
    )
    promoted = run_promote(ROLLOUT_RUN)
    assert promoted == {"model_name": "demo", "version": 7, "alias": "champion", "rollout": None}
    assert gateway.sent("PUT", "/v1/models/demo/aliases/champion") == [
        {"version": 7, "reason": DECISION["reason"]}
    ]
    assert not gateway.sent("PUT", "/v1/models/demo/rollout")
    assert not gateway.sent("PUT", "/v1/models/demo/aliases/challenger")


def test_without_rollout_promote_moves_the_alias_as_before(service: Any) -> None:
    gateway = service({"PUT /v1/models/demo/aliases/champion": moved("champion", 7, 6)})
    promoted = run_promote({**ROLLOUT_RUN, "rollout": None})
    assert promoted["alias"] == "champion" and promoted["rollout"] is None
    assert [f"{r.method} {r.url.path}" for r in gateway.requests] == [
        "PUT /v1/models/demo/aliases/champion"
    ]


def test_a_gateway_refusing_the_rollout_fails_the_task(service: Any) -> None:
    service(
        {
            "GET /v1/models/demo/aliases/champion": (200, {"name": "demo", "version": 6}),
            "PUT /v1/models/demo/aliases/challenger": moved("challenger", 7, None),
            "PUT /v1/models/demo/rollout": (422, {"detail": "mirror: alias 'shadow' is not set"}),
        }
    )
    with pytest.raises(AirflowFailException, match="starting the rollout of demo: 422"):
        run_promote({**ROLLOUT_RUN, "rollout": {**ROLLOUT, "mirror": "shadow"}})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"alias": "production"}, "alias must be 'champion', not 'production'"),
        ({"rollout_alias": "champion"}, "rollout_alias must not be 'champion'"),
        ({"rollout": {**ROLLOUT, "mirror": "challenger"}}, "is a variant already"),
    ],
)
def test_a_rollout_the_gateway_would_refuse_fails_before_anything_moves(
    service: Any, change: dict[str, Any], problem: str
) -> None:
    gateway = service({})
    with pytest.raises(AirflowFailException, match=problem):
        rollout_settings({**ROLLOUT_RUN, **change})
    with pytest.raises(AirflowFailException, match=problem):
        run_promote({**ROLLOUT_RUN, **change})
    assert gateway.requests == []


def test_without_rollout_any_alias_goes() -> None:
    assert rollout_settings({**PARAMS, "alias": "production", "rollout": None}) is None
    assert rollout_settings({**ROLLOUT_RUN, "rollout_alias": "canary"}) == {
        **ROLLOUT,
        "alias": "canary",
    }


def resolve(name: str, value: Any) -> Any:
    # A copy: resolve keeps the value it validated, and the DAG shares these Params.
    return copy.copy(ROLLOUT_PARAMS[name]).resolve(value)


def test_the_rollout_params_schema() -> None:
    for good in (None, ROLLOUT, {"weight": 1}, {"weight": 99, "guard": {}, "mirror": "shadow"}):
        assert resolve("rollout", good) == good
    bad = [
        {},  # weight is required
        {"weight": 0},
        {"weight": 100},
        {"weight": 12.5},
        {"weight": "10"},
        {"weight": 10, "wieght": 10},
        {"weight": 10, "guard": {"max_error_rate": 1.5}},
        {"weight": 10, "guard": {"max_p99_ms": 0}},
        {"weight": 10, "guard": {"min_requests": 0}},
        {"weight": 10, "guard": {"max_errors": 1}},
        {"weight": 10, "sticky_header": "X User"},
        {"weight": 10, "sticky_header": ""},
        {"weight": 10, "mirror": "1st"},
        [10],
    ]
    for value in bad:
        with pytest.raises(ParamValidationError):
            resolve("rollout", value)
    assert resolve("rollout_alias", "canary") == "canary"
    for alias in ("latest", "v2", "with space", ""):
        with pytest.raises(ParamValidationError):
            resolve("rollout_alias", alias)


# ---- inference_serves in a rollout ---------------------------------------------------------

MODEL_INFO = {"name": "demo", "version": 6, "alias": "champion"}
IN_ROLLOUT = {"model_name": "demo", "version": 7, "alias": "challenger", "rollout": {"revision": 1}}
READY = "/v2/models/demo/versions/7/ready"


def poke(promoted: dict[str, Any]) -> PokeReturnValue:
    result: PokeReturnValue = inference_serves.function(promoted, params=ROLLOUT_RUN)
    return result


@pytest.mark.parametrize(
    ("status", "body", "done"),
    [
        (200, {"name": "demo", "ready": True}, True),
        (503, {"name": "demo", "ready": False}, False),
        # Not one of its variants: inference has not seen the rollout yet.
        (404, {"error": "demo version 7 is not served"}, False),
    ],
)
def test_in_a_rollout_the_sensor_waits_for_a_variant_serving_the_version(
    service: Any, status: int, body: dict[str, Any], done: bool
) -> None:
    inference = service({"GET /model-info": (200, MODEL_INFO), f"GET {READY}": (status, body)})
    assert poke(IN_ROLLOUT).is_done is done
    assert [r.url.path for r in inference.requests] == ["/model-info", READY]


def test_in_a_rollout_another_model_on_inference_is_nothing_to_check(service: Any) -> None:
    inference = service({"GET /model-info": (200, {**MODEL_INFO, "name": "other"})})
    assert poke(IN_ROLLOUT).is_done is True
    assert [r.url.path for r in inference.requests] == ["/model-info"]


def test_in_a_rollout_an_unauthorised_sensor_fails(service: Any) -> None:
    service({"GET /model-info": (200, MODEL_INFO), f"GET {READY}": (403, {"error": "scope"})})
    with pytest.raises(AirflowFailException, match="403"):
        poke(IN_ROLLOUT)


def test_without_a_rollout_the_sensor_compares_model_info(service: Any) -> None:
    promoted = {**IN_ROLLOUT, "alias": "champion", "rollout": None}
    inference = service({"GET /model-info": (200, MODEL_INFO)})
    assert poke(promoted).is_done is False
    inference.routes["GET /model-info"] = (200, {**MODEL_INFO, "version": 7})
    assert poke(promoted).is_done is True
    assert all(r.url.path == "/model-info" for r in inference.requests)
