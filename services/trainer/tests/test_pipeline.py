from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import FunctionTransformer
from trainer.algorithms import ALGORITHMS
from trainer.datasets import frame_digest, load_builtin
from trainer.pipeline import build_pipeline, evaluate, infer_task, normalise_categoricals
from trainer.training import trusted_types


def mixed_frame(n: int = 200) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "city": rng.choice(["paris", "lyon", None], n),
            "plan": rng.choice(["basic", "pro"], n),
        }
    )
    frame.loc[::7, "age"] = np.nan
    target = pd.Series(np.where(frame["plan"] == "pro", "stay", "churn"), name="label")
    return frame, target


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], "classification"),
        ([0, 1, 2, 1], "classification"),
        ([True, False], "classification"),
        ([0.5, 1.7, 2.2, 9.1], "regression"),
        (list(range(100)), "regression"),
    ],
)
def test_task_is_inferred_from_the_target(values: list[object], task: str) -> None:
    assert infer_task(pd.Series(values)) == task


def test_pipeline_handles_categoricals_and_missing_values() -> None:
    features, target = mixed_frame()
    features = normalise_categoricals(features)
    model = build_pipeline(features, LogisticRegression(max_iter=500)).fit(features, target)
    unseen = pd.DataFrame({"age": [np.nan, 30.0], "city": [None, "berlin"], "plan": ["pro", None]})
    assert list(model.predict(unseen)[:1]) == ["stay"]
    metrics = evaluate("classification", model, features, target)
    assert metrics["accuracy"] == 1.0
    assert set(metrics) >= {"accuracy", "f1", "roc_auc", "log_loss"}


def test_regression_metrics() -> None:
    data = load_builtin("diabetes")
    model = build_pipeline(data.features, Ridge()).fit(data.features, data.target)
    metrics = evaluate("regression", model, data.features, data.target)
    assert metrics["rmse"] > 0 and 0 < metrics["r2"] < 1


def test_digest_depends_on_content_not_on_index() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert frame_digest(frame) == frame_digest(frame.set_axis([10, 11]))
    assert frame_digest(frame) != frame_digest(frame.assign(a=[1, 3]))


def test_none_and_nan_are_the_same_missing_category() -> None:
    features, target = mixed_frame()
    features = normalise_categoricals(features)
    model = build_pipeline(features, LogisticRegression(max_iter=500)).fit(features, target)
    rows = pd.DataFrame(
        {"age": [40.0, 50.0], "city": [None, None], "plan": [None, "pro"]}, dtype=object
    )
    as_nan = rows.astype({"age": float}).where(rows.notna(), np.nan)
    np.testing.assert_array_equal(model.predict_proba(rows), model.predict_proba(as_nan))


@pytest.mark.parametrize(
    ("task", "name"),
    [(task, name) for task, by_task in ALGORITHMS.items() for name in by_task],
)
def test_every_pipeline_is_saved_with_types_inference_will_load(task: str, name: str) -> None:
    """The platform's trusted-types list (one place) covers every pipeline the trainer builds."""
    features, target = mixed_frame()
    labels = target if task == "classification" else features["age"].fillna(40.0)
    estimator = ALGORITHMS[task][name].build(
        {"n_estimators": 3} if "forest" in name or name == "gradient_boosting" else {}
    )  # type: ignore[index]
    pipeline = build_pipeline(features, estimator).fit(features, labels)

    assert set(trusted_types(pipeline)) <= set(PLATFORM_TRUSTED_TYPES)


def test_a_pipeline_holding_a_foreign_type_is_refused_before_it_is_logged() -> None:
    features, target = mixed_frame()
    pipeline = build_pipeline(features, LogisticRegression()).fit(features, target)
    pipeline.steps.append(("hook", FunctionTransformer(abs)))

    with pytest.raises(ValueError, match="will not load"):
        trusted_types(pipeline)
