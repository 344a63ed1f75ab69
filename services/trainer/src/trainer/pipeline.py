"""The model a job trains: preprocessing and estimator in one scikit-learn pipeline.

Imputation, encoding and scaling live inside the logged pipeline, so whoever loads the model
(inference, a notebook) feeds it raw rows with no preprocessing code of its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlops_common.promotion import Task
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

MISSING = "__missing__"

# An integer target with at most this many distinct values is taken as class labels.
MAX_CLASSES_FOR_INTEGER_TARGET = 20


def infer_task(target: pd.Series) -> Task:
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.dropna()
    is_integral = pd.api.types.is_integer_dtype(values) or bool((values == values.round()).all())
    if is_integral and values.nunique() <= MAX_CLASSES_FOR_INTEGER_TARGET:
        return "classification"
    return "regression"


def split_columns(features: pd.DataFrame) -> tuple[list[str], list[str]]:
    numeric = [
        c
        for c in features.columns
        if pd.api.types.is_numeric_dtype(features[c])
        and not pd.api.types.is_bool_dtype(features[c])
    ]
    categorical = [c for c in features.columns if c not in numeric]
    return numeric, categorical


def build_pipeline(features: pd.DataFrame, estimator: BaseEstimator) -> Pipeline:
    numeric, categorical = split_columns(features)
    transformers = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        # Missing is NaN from pandas and None from JSON rows: both become one
                        # category, so the model answers the same whichever way a client sends it.
                        ("impute_nan", SimpleImputer(strategy="constant", fill_value=MISSING)),
                        (
                            "impute_none",
                            SimpleImputer(
                                missing_values=None, strategy="constant", fill_value=MISSING
                            ),
                        ),
                        ("encode", OneHotEncoder(handle_unknown="ignore", min_frequency=1)),
                    ]
                ),
                categorical,
            )
        )
    return Pipeline(
        [("preprocess", ColumnTransformer(transformers, remainder="drop")), ("model", estimator)]
    )


def normalise_categoricals(features: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as object dtype holding strings, with NaN for missing values."""
    _, categorical = split_columns(features)
    out = features.copy()
    for column in categorical:
        values = out[column].astype(object)
        out[column] = values.where(values.isna(), values.astype(str)).where(values.notna(), np.nan)
    return out


def evaluate(
    task: Task, model: Pipeline, features: pd.DataFrame, target: pd.Series
) -> dict[str, float]:
    predicted = model.predict(features)
    if task == "regression":
        return {
            "rmse": float(np.sqrt(mean_squared_error(target, predicted))),
            "mae": float(mean_absolute_error(target, predicted)),
            "r2": float(r2_score(target, predicted)),
        }
    metrics = {
        "accuracy": float(accuracy_score(target, predicted)),
        "f1": float(f1_score(target, predicted, average="weighted", zero_division=0)),
        "precision": float(precision_score(target, predicted, average="weighted", zero_division=0)),
        "recall": float(recall_score(target, predicted, average="weighted", zero_division=0)),
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        classes = model.classes_
        try:
            if len(classes) == 2:
                metrics["roc_auc"] = float(roc_auc_score(target, proba[:, 1]))
            else:
                metrics["roc_auc"] = float(
                    roc_auc_score(target, proba, multi_class="ovr", labels=classes)
                )
            metrics["log_loss"] = float(log_loss(target, proba, labels=classes))
        except ValueError:
            # A holdout missing some class cannot give an AUC; the other metrics still stand.
            pass
    return metrics
