"""Estimator parameters are bounded per algorithm; the platform sets n_jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from trainer.algorithms import ALGORITHMS
from trainer.jobs import JobStore

IRIS = {"model_name": "iris", "dataset": {"builtin": "iris"}}
DIABETES = {"model_name": "diabetes", "dataset": {"builtin": "diabetes"}}


def submit(client: TestClient, base: dict[str, Any], algorithm: str, **params: Any) -> Any:
    return client.post("/v1/train", json={**base, "algorithm": algorithm, "params": params})


def test_every_parameter_of_every_algorithm_has_a_rule() -> None:
    for task, by_name in ALGORITHMS.items():
        for name, algorithm in by_name.items():
            assert set(algorithm.rules) == algorithm.allowed_params(), (task, name)


def test_the_platform_runs_every_estimator_on_one_core() -> None:
    for by_name in ALGORITHMS.values():
        for algorithm in by_name.values():
            if "n_jobs" in algorithm.allowed_params():
                assert algorithm.build({}).get_params()["n_jobs"] == 1


@pytest.mark.parametrize(
    ("base", "algorithm", "params", "field"),
    [
        (IRIS, "random_forest", {"n_estimators": 10**8}, "params.n_estimators"),
        (IRIS, "random_forest", {"n_estimators": 5001}, "params.n_estimators"),
        (IRIS, "random_forest", {"n_estimators": 0}, "params.n_estimators"),
        (IRIS, "random_forest", {"n_estimators": 10.0}, "params.n_estimators"),
        (IRIS, "random_forest", {"n_estimators": True}, "params.n_estimators"),
        (IRIS, "random_forest", {"n_estimators": "100"}, "params.n_estimators"),
        (IRIS, "random_forest", {"n_estimators": 10**400}, "params.n_estimators"),
        (IRIS, "random_forest", {"max_depth": 65}, "params.max_depth"),
        (IRIS, "random_forest", {"max_features": "all"}, "params.max_features"),
        (IRIS, "random_forest", {"max_features": 1.5}, "params.max_features"),
        (IRIS, "random_forest", {"criterion": "squared_error"}, "params.criterion"),
        (IRIS, "random_forest", {"class_weight": {"0": 1}}, "params.class_weight"),
        (IRIS, "random_forest", {"monotonic_cst": [1, 0]}, "params.monotonic_cst"),
        (IRIS, "random_forest", {"random_state": -1}, "params.random_state"),
        (IRIS, "random_forest", {"random_state": 2**32}, "params.random_state"),
        (IRIS, "random_forest", {"n_jobs": -1}, "params.n_jobs"),
        (IRIS, "random_forest", {"n_jobs": 1}, "params.n_jobs"),
        (IRIS, "random_forest", {"verbose": 3}, "params.verbose"),
        (IRIS, "logistic_regression", {"max_iter": 100_001}, "params.max_iter"),
        (IRIS, "logistic_regression", {"C": 0}, "params.C"),
        (IRIS, "logistic_regression", {"C": 1e7}, "params.C"),
        (IRIS, "logistic_regression", {"C": -1}, "params.C"),
        (IRIS, "logistic_regression", {"solver": "adam"}, "params.solver"),
        (IRIS, "logistic_regression", {"n_jobs": 2}, "params.n_jobs"),
        (IRIS, "gradient_boosting", {"learning_rate": 0}, "params.learning_rate"),
        (IRIS, "gradient_boosting", {"learning_rate": 10.5}, "params.learning_rate"),
        (IRIS, "gradient_boosting", {"subsample": 0}, "params.subsample"),
        (IRIS, "gradient_boosting", {"init": "model.pkl"}, "params.init"),
        (IRIS, "hist_gradient_boosting", {"max_iter": 5001}, "params.max_iter"),
        (IRIS, "hist_gradient_boosting", {"max_bins": 256}, "params.max_bins"),
        (IRIS, "hist_gradient_boosting", {"scoring": "r2"}, "params.scoring"),
        (DIABETES, "ridge", {"alpha": 1e7}, "params.alpha"),
        (DIABETES, "ridge", {"max_iter": 0}, "params.max_iter"),
        (DIABETES, "linear_regression", {"n_jobs": 8}, "params.n_jobs"),
        (DIABETES, "gradient_boosting", {"alpha": 1.0}, "params.alpha"),
        (DIABETES, "hist_gradient_boosting", {"quantile": 2}, "params.quantile"),
        (DIABETES, "random_forest", {"criterion": "gini"}, "params.criterion"),
    ],
)
def test_out_of_range_params_are_422_naming_the_param(
    client: TestClient,
    store: JobStore,
    base: dict[str, Any],
    algorithm: str,
    params: dict[str, Any],
    field: str,
) -> None:
    response = submit(client, base, algorithm, **params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert store.recent(None, None, 10) == []


def test_a_user_n_jobs_is_refused_because_the_platform_sets_it(client: TestClient) -> None:
    response = submit(client, IRIS, "random_forest", n_jobs=-1)
    assert "platform sets n_jobs" in response.json()["error"]["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(client: TestClient, value: str) -> None:
    raw = json.dumps({**IRIS, "algorithm": "logistic_regression"})[:-1] + (
        f', "params": {{"C": {value}}}}}'
    )
    response = client.post("/v1/train", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "params.C"


@pytest.mark.parametrize(
    ("base", "algorithm", "params"),
    [
        (IRIS, "random_forest", {"n_estimators": 5000, "max_depth": 64, "max_features": "sqrt"}),
        (IRIS, "random_forest", {"max_depth": None, "min_samples_split": 0.5, "bootstrap": False}),
        (IRIS, "random_forest", {"class_weight": "balanced_subsample", "random_state": 0}),
        (IRIS, "logistic_regression", {"C": 1e6, "max_iter": 100_000, "solver": "saga"}),
        (IRIS, "logistic_regression", {"C": 1, "class_weight": None}),
        (IRIS, "gradient_boosting", {"learning_rate": 10, "subsample": 1, "init": "zero"}),
        (IRIS, "hist_gradient_boosting", {"max_iter": 5000, "early_stopping": True}),
        (IRIS, "hist_gradient_boosting", {"early_stopping": "auto", "scoring": "f1_macro"}),
        (DIABETES, "ridge", {"alpha": 0, "solver": "lsqr", "max_iter": None}),
        (DIABETES, "linear_regression", {"positive": True}),
        (DIABETES, "gradient_boosting", {"loss": "huber", "alpha": 0.5}),
        (DIABETES, "hist_gradient_boosting", {"loss": "quantile", "quantile": 0.9}),
        (DIABETES, "random_forest", {"criterion": "absolute_error", "max_samples": 0.5}),
    ],
)
def test_params_within_bounds_are_taken(
    client: TestClient, base: dict[str, Any], algorithm: str, params: dict[str, Any]
) -> None:
    response = submit(client, base, algorithm, **params)
    assert response.status_code == 202, response.text


def test_unknown_params_are_still_refused(client: TestClient) -> None:
    response = submit(client, IRIS, "random_forest", learning_rate=0.1)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "params.learning_rate"
    assert "has no parameter" in response.json()["error"]["message"]


def test_too_many_params_are_refused(client: TestClient) -> None:
    params = {f"p{i}": 1 for i in range(65)}
    response = submit(client, IRIS, "random_forest", **params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "params"


def _samples(rule: Any) -> list[Any]:
    out: list[Any] = []
    for interval, as_int in ((rule.ints, True), (rule.numbers, False)):
        if interval is None:
            continue
        low = interval.low + (0.001 if interval.low_open else 0)
        high = interval.high - (0.001 if interval.high_open else 0)
        out += [int(low), int(high)] if as_int else [float(low), float(high)]
    out += list(rule.choices)
    out += [True, False] if rule.boolean else []
    out += [None] if rule.nullable else []
    return out


def test_every_value_the_rules_allow_is_one_scikit_learn_accepts() -> None:
    for by_name in ALGORITHMS.values():
        for algorithm in by_name.values():
            for name, rule in algorithm.rules.items():
                for value in _samples(rule):
                    assert algorithm.param_error(name, value) is None, (name, value)
                    estimator = algorithm.build({name: value})
                    estimator._validate_params()  # type: ignore[attr-defined]
