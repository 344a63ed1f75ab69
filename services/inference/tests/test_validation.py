from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from inference.settings import InferenceSettings
from inference.validation import InputColumn, InputSchema, build_frame
from mlops_common.errors import Unprocessable

from .conftest import SIGNING_PUBLIC_KEY

SCHEMA = InputSchema(
    (
        InputColumn("age", "double", required=False),
        InputColumn("visits", "long"),
        InputColumn("city", "string", required=False),
        InputColumn("member", "boolean"),
        InputColumn("score", "float"),
        InputColumn("seen", "datetime", required=False),
        InputColumn("tags", "any", required=False),
    )
)


def _error(rows: list[object], schema: InputSchema | None = SCHEMA) -> Unprocessable:
    with pytest.raises(Unprocessable) as info:
        build_frame(rows, schema)
    return info.value


def test_dtypes_are_the_training_dtypes() -> None:
    rows = [
        {"age": 31, "visits": 2, "city": "lyon", "member": True, "score": 0.5, "seen": None},
        {"age": None, "visits": 3.0, "city": None, "member": False, "score": 1},
    ]
    frame = build_frame(rows, SCHEMA)
    assert list(frame.columns) == ["age", "visits", "city", "member", "score", "seen", "tags"]
    assert frame["age"].dtype == np.float64
    assert math.isnan(frame["age"][1])
    assert frame["visits"].dtype == np.int64
    assert frame["visits"].tolist() == [2, 3]
    assert frame["city"].dtype == object
    # NaN, not None: scikit-learn's imputers only see NaN as missing in object columns.
    assert isinstance(frame["city"][1], float) and math.isnan(frame["city"][1])
    assert frame["member"].dtype == bool
    assert frame["score"].dtype == np.float32
    assert str(frame["seen"].dtype).startswith("datetime64")
    assert frame["tags"].isna().all()


def test_nulls_in_integer_and_boolean_columns() -> None:
    rows = [
        {"visits": None, "member": None, "score": float("nan")},
        {"visits": 4, "member": True, "score": 2.0},
    ]
    frame = build_frame(rows, SCHEMA)
    assert frame["visits"].dtype == np.float64  # as pandas itself stores an int column with gaps
    assert frame["visits"].isna().tolist() == [True, False]
    assert frame["member"].dtype == object
    assert frame["member"].isna().tolist() == [True, False]
    assert frame["score"].isna().tolist() == [True, False]


def test_datetimes_are_parsed_and_made_naive_utc() -> None:
    rows = [{"visits": 1, "member": True, "score": 1.0, "seen": "2026-01-02T03:04:05+01:00"}]
    frame = build_frame(rows, SCHEMA)
    assert frame["seen"][0] == pd.Timestamp("2026-01-02T02:04:05")
    error = _error([{"visits": 1, "member": True, "score": 1.0, "seen": "yesterday"}])
    assert error.field == "instances[0].seen"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12", "expected an integer, got string '12'"),
        (False, "expected an integer, got boolean false"),
        (2**70, "expected an integer between"),
        ([1], "expected an integer, got an array"),
    ],
)
def test_integer_problems(value: object, message: str) -> None:
    error = _error([{"visits": value, "member": True, "score": 1.0}])
    assert error.field == "instances[0].visits"
    assert message in error.message


def test_huge_number_is_not_finite() -> None:
    error = _error([{"visits": 1, "member": True, "score": 10**400}])
    assert error.field == "instances[0].score"
    assert "expected a finite number" in error.message


def test_long_signatures_are_abbreviated_in_length_errors() -> None:
    schema = InputSchema(tuple(InputColumn(f"f{i}", "double") for i in range(12)))
    error = _error([[1.0] * 11], schema)
    assert error.message == (
        "expected 12 values in signature order (f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, …), got 11"
    )


def test_without_schema_rows_pass_through() -> None:
    frame = build_frame([{"a": 1, "b": "x"}, {"a": None, "b": "y"}], None)
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].isna().tolist() == [False, True]
    assert build_frame([[1, 2], [3, 4]], None).shape == (2, 2)
    assert _error([[1, 2], [3]], None).field == "instances[1]"


def test_cache_dir_is_absolute_whatever_the_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_MODEL_NAME", "churn")
    monkeypatch.setenv("INFERENCE_CACHE_DIR", "relative/cache")
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("INFERENCE_TRUSTED_SIGNING_KEYS", SIGNING_PUBLIC_KEY)
    settings = InferenceSettings()  # type: ignore[call-arg, unused-ignore]
    assert settings.cache_dir.is_absolute()
    assert settings.cache_dir == Path.cwd() / "relative" / "cache"
    assert settings.port == 8800
    assert settings.model_alias == "champion"
    monkeypatch.delenv("INFERENCE_CACHE_DIR")
    assert InferenceSettings().cache_dir.is_absolute()  # type: ignore[call-arg, unused-ignore]
