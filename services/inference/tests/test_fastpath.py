"""The compiled path must answer exactly as scikit-learn does, or not be used at all."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from inference.model import ModelVersion, SklearnModel
from inference.validation import build_frame
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

# The numeric inputs in signature order: the columns of a decoded numeric matrix.
NUMERIC = ["age", "income", "visits"]


def mixed_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "income": rng.normal(50_000, 15_000, n),
            "visits": rng.integers(0, 30, n),
            "city": rng.choice(["paris", "lyon", "nice"], n).astype(object),
            "plan": rng.choice(["basic", "pro", "team"], n).astype(object),
        }
    )
    frame.loc[::7, "age"] = np.nan
    frame.loc[::11, "city"] = np.nan
    return frame


def pipeline(estimator: Any, scaler: Any = None) -> Pipeline:
    numeric = Pipeline(
        [("impute", SimpleImputer(strategy="median")), ("scale", scaler or StandardScaler())]
    )
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            (
                "impute_none",
                SimpleImputer(missing_values=None, strategy="constant", fill_value="__missing__"),
            ),
            ("encode", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    columns = ColumnTransformer(
        [("num", numeric, ["age", "income", "visits"]), ("cat", categorical, ["city", "plan"])]
    )
    return Pipeline([("pre", columns), ("model", estimator)])


def served(tmp_path: Path, model: Any, frame: pd.DataFrame, target: Any) -> SklearnModel:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    path = tmp_path / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(frame, target),
            input_example=frame.head(3),
            pip_requirements=["scikit-learn"],
            serialization_format="skops",
            skops_trusted_types=list(PLATFORM_TRUSTED_TYPES),
        )
    loaded = SklearnModel(
        path, ModelVersion(name="m", version=1, alias="champion", artifact_uri="s3://m/1")
    )
    loaded.load()
    return loaded


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return list(json.loads(frame.to_json(orient="records")))


def tricky_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = rows(frame.head(20))
    out[0]["city"] = "a city never seen in training"
    out[1]["age"] = None
    out[2]["plan"] = None
    out[3] = {k: None for k in out[3]}
    out[4]["visits"] = 3.0  # a float for an integer column is fine, as in the full validator
    return out


TARGETS = {
    "binary": lambda f: np.where(f["plan"] == "pro", "stay", "churn"),
    "multiclass": lambda f: f["plan"].to_numpy(),
    "regression": lambda f: f["income"].to_numpy() / 1000 + f["visits"].to_numpy(),
}


@pytest.mark.parametrize(
    ("estimator", "target"),
    [
        (LogisticRegression(max_iter=1000), "binary"),
        (LogisticRegression(max_iter=1000), "multiclass"),
        (Ridge(), "regression"),
        (LinearRegression(), "regression"),
        (RandomForestClassifier(n_estimators=15, random_state=0), "binary"),
        (RandomForestClassifier(n_estimators=15, random_state=0), "multiclass"),
    ],
    ids=["lr-binary", "lr-multiclass", "ridge", "linear", "rf-binary", "rf-multiclass"],
)
def test_compiled_answers_equal_scikit_learn(tmp_path: Path, estimator: Any, target: str) -> None:
    frame = mixed_frame()
    labels = TARGETS[target](frame)
    model = served(tmp_path, pipeline(estimator).fit(frame, labels), frame, labels)
    assert model.compiled
    batch = tricky_rows(frame)
    decoded = model.decode_rows(batch)
    assert decoded is not None
    fast = model.as_prediction(*model.predict_matrix(model.transform(decoded)))
    slow = model.predict(build_frame(batch, model.input_schema))
    assert fast.predictions == slow.predictions
    if slow.probabilities is None:
        assert fast.probabilities is None
    else:
        np.testing.assert_allclose(fast.probabilities, slow.probabilities, rtol=1e-9, atol=1e-12)
        assert fast.classes == slow.classes
    as_lists = model.decode_rows([list(row.values()) for row in batch])
    assert as_lists is not None
    np.testing.assert_array_equal(as_lists.numeric, decoded.numeric)
    as_body = model.decode_json(orjson.dumps({"instances": batch}))
    assert as_body is not None
    np.testing.assert_array_equal(as_body.numeric, decoded.numeric)
    assert as_body.categorical == decoded.categorical
    # V2 tensors arrive as columns: missing strings as null, as JSON has them.
    plain = [{k: (None if v != v else v) for k, v in row.items()} for row in batch]
    as_columns = model.decode_columns({k: [row[k] for row in plain] for k in plain[0]}, len(plain))
    assert as_columns is not None
    np.testing.assert_array_equal(as_columns.numeric, decoded.numeric)
    assert as_columns.categorical == model.decode_rows(plain).categorical  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "change",
    [
        {"age": True},  # booleans are not numbers
        {"age": "42"},  # nor are numeric strings
        {"city": 3},  # nor is a number a category
        {"colour": "red"},  # unknown feature
        {"age": 1e400},  # overflows to infinity
        {"visits": 2.5},  # an integer column takes whole numbers only
        {"visits": 2.0**63},  # beyond a long
    ],
)
def test_anything_unusual_goes_to_the_full_validator(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    frame = mixed_frame()
    labels = TARGETS["binary"](frame)
    model = served(
        tmp_path, pipeline(LogisticRegression(max_iter=1000)).fit(frame, labels), frame, labels
    )
    assert model.compiled
    good = rows(frame.head(1))[0]
    row = {**good, **change}
    assert model.decode_rows([row]) is None
    missing = {k: v for k, v in good.items() if k != "age"}
    assert model.decode_rows([missing]) is None
    assert model.decode_rows([]) is None
    for body in (
        {"instances": [good, row]},
        {"instances": [missing]},
        {"instances": []},
        {"instances": [list(good.values())]},  # lists take the general path
        {"instances": [good], "extra": 1},
    ):
        # json writes the overflowing 1e400 as Infinity: put the literal back.
        raw = json.dumps(body).replace("Infinity", "1e400").encode()
        assert model.decode_json(raw) is None, body
    assert model.decode_json(b'{"instances": [') is None


def test_whole_floats_fit_integer_columns(tmp_path: Path) -> None:
    frame = mixed_frame()
    labels = TARGETS["binary"](frame)
    model = served(
        tmp_path, pipeline(LogisticRegression(max_iter=1000)).fit(frame, labels), frame, labels
    )
    assert model.compiled
    row = {**rows(frame.head(1))[0], "visits": 3.0}
    decoded = model.decode_json(orjson.dumps({"instances": [row]}))
    assert decoded is not None
    assert decoded.numeric[0, NUMERIC.index("visits")] == 3.0


def test_unsupported_steps_stay_on_scikit_learn(tmp_path: Path) -> None:
    frame = mixed_frame()
    labels = TARGETS["binary"](frame)
    model = served(
        tmp_path,
        pipeline(LogisticRegression(max_iter=1000), MinMaxScaler()).fit(frame, labels),
        frame,
        labels,
    )
    assert not model.compiled
    prediction = model.predict(build_frame(rows(frame.head(3)), model.input_schema))
    assert len(prediction.predictions) == 3


def test_slow_models_measure_a_higher_call_cost(tmp_path: Path) -> None:
    frame = mixed_frame()
    labels = TARGETS["binary"](frame)
    linear = served(
        tmp_path / "a",
        pipeline(LogisticRegression(max_iter=1000)).fit(frame, labels),
        frame,
        labels,
    )
    forest = served(
        tmp_path / "b",
        pipeline(RandomForestClassifier(n_estimators=200, random_state=0)).fit(frame, labels),
        frame,
        labels,
    )
    assert forest.call_cost_s > 10 * linear.call_cost_s


def numeric_frame() -> pd.DataFrame:
    return mixed_frame()[["age", "income", "visits"]].fillna(50.0)


@pytest.mark.parametrize(
    "estimator",
    [
        LogisticRegression(max_iter=1000),
        Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=1000))]),
        Pipeline(
            [
                ("impute", SimpleImputer()),
                ("scale", StandardScaler()),
                ("model", RandomForestClassifier(n_estimators=15, random_state=0)),
            ]
        ),
        Pipeline([("scale", None), ("model", Ridge())]),
    ],
    ids=["bare-lr", "scaled-lr", "imputed-scaled-rf", "ridge-skipped-step"],
)
def test_numeric_models_without_a_column_transformer_compile(
    tmp_path: Path, estimator: Any
) -> None:
    frame = numeric_frame()
    target = (
        frame["income"].to_numpy() / 1000
        if isinstance(estimator, Pipeline) and isinstance(estimator.steps[-1][1], Ridge)
        else TARGETS["binary"](mixed_frame())
    )
    model = served(tmp_path, estimator.fit(frame, target), frame, target)
    assert model.compiled
    batch = rows(frame.head(20))
    # Columns in another order than fitted: the compiled path reorders by name.
    batch[0] = dict(reversed(list(batch[0].items())))
    decoded = model.decode_json(orjson.dumps({"instances": batch}))
    assert decoded is not None
    fast = model.as_prediction(*model.predict_matrix(model.transform(decoded)))
    slow = model.predict(build_frame(batch, model.input_schema))
    assert fast.predictions == slow.predictions
    if slow.probabilities is not None:
        np.testing.assert_allclose(fast.probabilities, slow.probabilities, rtol=1e-9, atol=1e-12)


def test_a_null_nothing_imputes_is_left_to_scikit_learn(tmp_path: Path) -> None:
    frame = numeric_frame()
    labels = TARGETS["binary"](mixed_frame())
    model = served(tmp_path, LogisticRegression(max_iter=1000).fit(frame, labels), frame, labels)
    assert model.compiled
    row = {**rows(frame.head(1))[0], "income": None}
    assert model.decode_rows([row]) is None
    assert model.decode_json(orjson.dumps({"instances": [row]})) is None


def test_a_bare_forest_fitted_on_named_columns_stays_on_scikit_learn(tmp_path: Path) -> None:
    frame = numeric_frame()
    labels = TARGETS["binary"](mixed_frame())
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, labels)
    model = served(tmp_path, forest, frame, labels)
    assert not model.compiled
    assert len(model.predict(build_frame(rows(frame.head(2)), model.input_schema)).predictions) == 2
