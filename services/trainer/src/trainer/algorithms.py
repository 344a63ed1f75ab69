"""The estimators a job may ask for, by task, with their defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Algorithm:
    factory: Callable[..., BaseEstimator]
    defaults: dict[str, Any] = field(default_factory=dict)

    def allowed_params(self) -> set[str]:
        return set(inspect.signature(self.factory).parameters)

    def build(self, params: dict[str, Any]) -> BaseEstimator:
        return self.factory(**{**self.defaults, **params})


ALGORITHMS: dict[Task, dict[str, Algorithm]] = {
    "classification": {
        "logistic_regression": Algorithm(LogisticRegression, {"max_iter": 1000}),
        "random_forest": Algorithm(RandomForestClassifier, {"n_estimators": 100, "n_jobs": 1}),
        "gradient_boosting": Algorithm(GradientBoostingClassifier),
        "hist_gradient_boosting": Algorithm(HistGradientBoostingClassifier),
    },
    "regression": {
        "ridge": Algorithm(Ridge),
        "linear_regression": Algorithm(LinearRegression),
        "random_forest": Algorithm(RandomForestRegressor, {"n_estimators": 100, "n_jobs": 1}),
        "gradient_boosting": Algorithm(GradientBoostingRegressor),
        "hist_gradient_boosting": Algorithm(HistGradientBoostingRegressor),
    },
}

DEFAULT_ALGORITHM: dict[Task, str] = {
    "classification": "logistic_regression",
    "regression": "ridge",
}

ALL_NAMES = sorted({name for by_task in ALGORITHMS.values() for name in by_task})

# Metric name -> True when higher is better.
METRICS: dict[Task, dict[str, bool]] = {
    "classification": {
        "accuracy": True,
        "f1": True,
        "precision": True,
        "recall": True,
        "roc_auc": True,
        "log_loss": False,
    },
    "regression": {"rmse": False, "mae": False, "r2": True},
}
DEFAULT_METRIC: dict[Task, str] = {"classification": "f1", "regression": "rmse"}
ALL_METRICS = sorted({m for by_task in METRICS.values() for m in by_task})
