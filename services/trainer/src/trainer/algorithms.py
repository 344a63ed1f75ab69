"""The estimators a job may ask for, by task, with their defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops_common.errors import Unprocessable
from mlops_common.promotion import Task
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

from trainer import params as rules
from trainer.params import Param


@dataclass(frozen=True)
class Algorithm:
    factory: Callable[..., BaseEstimator]
    # What a request may set each parameter to; a parameter without a rule is refused.
    rules: dict[str, Param]
    defaults: dict[str, Any] = field(default_factory=dict)

    def allowed_params(self) -> set[str]:
        return set(inspect.signature(self.factory).parameters)

    def param_error(self, name: str, value: Any) -> str | None:
        """Why a request may not set ``name`` to ``value``, or None when it may."""
        rule = self.rules.get(name)
        if rule is None:
            return f"{name} cannot be set through the API"
        return rule.error(name, value)

    def build(self, params: dict[str, Any]) -> BaseEstimator:
        return self.factory(**{**self.defaults, **params})


# The platform, not the request, sets n_jobs: one core per job, so jobs cannot starve each other.
ONE_CORE = {"n_jobs": 1}

ALGORITHMS: dict[Task, dict[str, Algorithm]] = {
    "classification": {
        "logistic_regression": Algorithm(
            LogisticRegression, rules.LOGISTIC_REGRESSION, {"max_iter": 1000, **ONE_CORE}
        ),
        "random_forest": Algorithm(
            RandomForestClassifier,
            rules.RANDOM_FOREST_CLASSIFIER,
            {"n_estimators": 100, **ONE_CORE},
        ),
        "gradient_boosting": Algorithm(
            GradientBoostingClassifier, rules.GRADIENT_BOOSTING_CLASSIFIER
        ),
        "hist_gradient_boosting": Algorithm(
            HistGradientBoostingClassifier, rules.HIST_GRADIENT_BOOSTING_CLASSIFIER
        ),
    },
    "regression": {
        "ridge": Algorithm(Ridge, rules.RIDGE),
        "linear_regression": Algorithm(LinearRegression, rules.LINEAR_REGRESSION, ONE_CORE),
        "random_forest": Algorithm(
            RandomForestRegressor, rules.RANDOM_FOREST_REGRESSOR, {"n_estimators": 100, **ONE_CORE}
        ),
        "gradient_boosting": Algorithm(
            GradientBoostingRegressor, rules.GRADIENT_BOOSTING_REGRESSOR
        ),
        "hist_gradient_boosting": Algorithm(
            HistGradientBoostingRegressor, rules.HIST_GRADIENT_BOOSTING_REGRESSOR
        ),
    },
}

DEFAULT_ALGORITHM: dict[Task, str] = {
    "classification": "logistic_regression",
    "regression": "ridge",
}

ALL_NAMES = sorted({name for by_task in ALGORITHMS.values() for name in by_task})


def params_json_schema() -> dict[str, Any]:
    """The ``params`` object for the OpenAPI schema: every parameter some algorithm takes, with
    the alternatives any of them allows (which ones apply depends on the algorithm chosen)."""
    properties: dict[str, dict[str, Any]] = {}
    for by_task in ALGORITHMS.values():
        for algorithm in by_task.values():
            for name, rule in algorithm.rules.items():
                options = properties.setdefault(name, {"anyOf": []})["anyOf"]
                for option in rule.json_schemas():
                    if option not in options:
                        options.append(option)
    return {
        "properties": {name: p for name, p in sorted(properties.items()) if p["anyOf"]},
        "additionalProperties": False,
    }


def resolve_algorithm(
    task: Task, requested: str | None, params: dict[str, Any]
) -> tuple[str, BaseEstimator]:
    """The algorithm's name and its estimator built with ``params``; 422 naming what is wrong."""
    name = requested or DEFAULT_ALGORITHM[task]
    algorithm = ALGORITHMS[task].get(name)
    if algorithm is None:
        known = ", ".join(sorted(ALGORITHMS[task]))
        raise Unprocessable(
            f"algorithm {name!r} does not do {task}; use one of: {known}", field="algorithm"
        )
    unknown = sorted(set(params) - algorithm.allowed_params())
    if unknown:
        raise Unprocessable(
            f"{name} has no parameter(s) {', '.join(unknown)}", field=f"params.{unknown[0]}"
        )
    for param, value in params.items():
        problem = algorithm.param_error(param, value)
        if problem is not None:
            raise Unprocessable(f"{name}: {problem}", field=f"params.{param}")
    try:
        return name, algorithm.build(params)
    except (TypeError, ValueError) as exc:
        raise Unprocessable(f"invalid params for {name}: {exc}", field="params") from exc
