"""Request rows -> a pandas DataFrame in signature column order, with errors that name the field.

The frame must look like the training data did, or the pipeline behaves differently: numeric
columns are float64 with NaN for null, strings are object columns with NaN for null. NaN and not
None, because scikit-learn's imputers only treat NaN as missing in object columns: a None would
silently reach the one-hot encoder as an unknown category instead of being imputed.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from mlops_common.errors import Unprocessable

# Kinds of column the validator knows; everything else (arrays, objects, maps) passes through.
ColumnKind = Literal[
    "double", "float", "long", "integer", "string", "boolean", "datetime", "binary"
]
KNOWN_KINDS: frozenset[str] = frozenset(get_args(ColumnKind))

MAX_REPORTED_PROBLEMS = 20
_NAMES_SHOWN = 10
_INT_RANGE = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class InputColumn:
    name: str
    type: str  # an MLflow DataType name, or "any" for arrays, objects and maps
    required: bool = True


@dataclass(frozen=True)
class InputSchema:
    """The named input columns of a model signature, in signature order."""

    columns: tuple[InputColumn, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


class _Problems:
    """Collects problems up to a cap, so one bad column in 10 000 rows is one readable error."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, field: str, message: str) -> None:
        if not self.full:
            self.items.append(Problem(field, message))

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_REPORTED_PROBLEMS

    def raise_if_any(self) -> None:
        if not self.items:
            return
        first = self.items[0]
        message = first.message
        if len(self.items) > 1:
            capped = f"; checking stopped after {MAX_REPORTED_PROBLEMS}" if self.full else ""
            message += f" (and {len(self.items) - 1} more in details.errors{capped})"
        raise Unprocessable(
            message,
            field=first.field,
            errors=[{"field": p.field, "message": p.message} for p in self.items],
        )


def check_batch_size(instances: Sequence[Any]) -> None:
    if not instances:
        raise Unprocessable("must contain at least one row", field="instances")


def build_frame(instances: Sequence[Any], schema: InputSchema | None) -> pd.DataFrame:
    """Validate ``instances`` (objects or lists) and return them as a DataFrame.

    Without a schema the rows are passed through to pandas as they are.
    """
    check_batch_size(instances)
    kind = _row_kind(instances)
    if schema is None:
        return _passthrough_frame(instances, kind)
    problems = _Problems()
    if kind == "object":
        columns = _columns_from_objects(instances, schema, problems)
    else:
        columns = _columns_from_lists(instances, schema, problems)
    problems.raise_if_any()
    return _convert(columns, schema, len(instances), problems)


def build_frame_from_columns(
    columns: dict[str, list[Any]], rows: int, schema: InputSchema | None
) -> pd.DataFrame:
    """``build_frame`` for named columns of ``rows`` values each (V2 tensors), with the same
    checks and messages: a problem is named by row (``instances[3].age``), as ``/predict`` does.

    Column names not in the schema are the caller's to refuse (it knows the tensor's place).
    """
    if schema is None:
        return pd.DataFrame(columns, index=pd.RangeIndex(rows))
    problems = _Problems()
    missing = [c.name for c in schema.columns if c.required and c.name not in columns]
    if missing:
        for i in range(min(rows, MAX_REPORTED_PROBLEMS)):
            problems.add(f"instances[{i}]", f"missing features: {', '.join(missing)}")
        problems.raise_if_any()
    # An absent optional feature is a null, as in /predict.
    nulls = [None] * rows
    full = {c.name: columns.get(c.name, nulls) for c in schema.columns}
    return _convert(full, schema, rows, problems)


def _convert(
    columns: dict[str, list[Any]], schema: InputSchema, rows: int, problems: _Problems
) -> pd.DataFrame:
    converted: dict[str, pd.Series[Any]] = {}
    for column in schema.columns:
        converted[column.name] = _convert_column(column, columns[column.name], problems)
    problems.raise_if_any()
    return pd.DataFrame(converted, index=pd.RangeIndex(rows))


def _row_kind(instances: Sequence[Any]) -> Literal["object", "list"]:
    first = instances[0]
    if isinstance(first, dict):
        kind: Literal["object", "list"] = "object"
    elif isinstance(first, list):
        kind = "list"
    else:
        raise Unprocessable(
            f"expected an object {{feature: value}} or a list of values, got {_describe(first)}",
            field="instances[0]",
        )
    expected = dict if kind == "object" else list
    for i, row in enumerate(instances):
        if not isinstance(row, expected):
            got = "a list" if isinstance(row, list) else _describe(row)
            article = "an" if kind == "object" else "a"
            raise Unprocessable(
                f"expected {article} {kind} like instances[0] (all instances must be the same "
                f"kind), got {got}",
                field=f"instances[{i}]",
            )
    return kind


def _passthrough_frame(instances: Sequence[Any], kind: Literal["object", "list"]) -> pd.DataFrame:
    if kind == "list":
        width = len(instances[0])
        for i, row in enumerate(instances):
            if len(row) != width:
                raise Unprocessable(
                    f"expected {width} values (as many as instances[0]), got {len(row)}",
                    field=f"instances[{i}]",
                )
    return pd.DataFrame(list(instances))


def _columns_from_objects(
    instances: Sequence[Any], schema: InputSchema, problems: _Problems
) -> dict[str, list[Any]]:
    names = schema.names
    known = set(names)
    required = [c.name for c in schema.columns if c.required]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, row in enumerate(instances):
        if problems.full:
            break
        missing = [name for name in required if name not in row]
        if missing:
            problems.add(f"instances[{i}]", f"missing features: {', '.join(missing)}")
        unknown = [str(key) for key in row if key not in known]
        if unknown:
            problems.add(f"instances[{i}]", f"unknown features: {', '.join(unknown)}")
        # An absent optional feature is a null: MLflow marks columns optional when the training
        # data had gaps, and the pipeline imputes nulls.
        for name in names:
            columns[name].append(row.get(name))
    return columns


def _columns_from_lists(
    instances: Sequence[Any], schema: InputSchema, problems: _Problems
) -> dict[str, list[Any]]:
    names = schema.names
    width = len(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, row in enumerate(instances):
        if problems.full:
            break
        if len(row) != width:
            problems.add(
                f"instances[{i}]",
                f"expected {width} values in signature order ({_name_list(names)}), got {len(row)}",
            )
            continue
        for name, value in zip(names, row, strict=True):
            columns[name].append(value)
    return columns


def _convert_column(column: InputColumn, values: list[Any], problems: _Problems) -> pd.Series[Any]:
    """Check every value of one column and build the Series with the training-time dtype."""
    kind = column.type if column.type in KNOWN_KINDS else "any"
    if kind == "any":
        return pd.Series(values, dtype=object)
    check = _CHECKS[kind]
    cleaned: list[Any] = []
    has_null = False
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            has_null = True
            cleaned.append(None)
            continue
        ok, result = check(value, kind)
        if not ok:
            problems.add(f"instances[{i}].{column.name}", result)
            if problems.full:
                break
            continue
        cleaned.append(result)
    if problems.items:
        return pd.Series([], dtype=object)
    return _series(kind, cleaned, has_null)


def _series(kind: str, values: list[Any], has_null: bool) -> pd.Series[Any]:
    if kind in ("double", "float"):
        dtype = np.float64 if kind == "double" else np.float32
        return pd.Series([np.nan if v is None else v for v in values], dtype=dtype)
    if kind in ("long", "integer"):
        if has_null:  # integers cannot hold NaN; pandas itself would make this column float64
            return pd.Series([np.nan if v is None else v for v in values], dtype=np.float64)
        return pd.Series(values, dtype=np.int64 if kind == "long" else np.int32)
    if kind == "boolean" and not has_null:
        return pd.Series(values, dtype=bool)
    if kind == "datetime":
        return pd.Series([pd.NaT if v is None else v for v in values], dtype="datetime64[ns]")
    return pd.Series([np.nan if v is None else v for v in values], dtype=object)


def _check_number(value: Any, kind: str) -> tuple[bool, Any]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False, f"expected a number, got {_describe(value)}"
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isinf(number):
        return False, f"expected a finite number, got {_describe(value)}"
    return True, number


def _check_integer(value: Any, kind: str) -> tuple[bool, Any]:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return False, f"expected an integer, got {_describe(value)}"
    low, high = _INT_RANGE[kind]
    if not low <= value <= high:
        return False, f"expected an integer between {low} and {high}, got {value}"
    return True, value


def _check_string(value: Any, kind: str) -> tuple[bool, Any]:
    if not isinstance(value, str):
        return False, f"expected a string, got {_describe(value)}"
    return True, value


def _check_boolean(value: Any, kind: str) -> tuple[bool, Any]:
    if not isinstance(value, bool):
        return False, f"expected a boolean (true or false), got {_describe(value)}"
    return True, value


def _check_datetime(value: Any, kind: str) -> tuple[bool, Any]:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # MLflow's datetime columns are naive datetime64[ns]; aware inputs are taken as UTC.
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
            return True, parsed
    return False, f"expected an ISO 8601 date-time string, got {_describe(value)}"


def _check_binary(value: Any, kind: str) -> tuple[bool, Any]:
    if isinstance(value, str):
        try:
            return True, base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    return False, f"expected base64-encoded bytes, got {_describe(value)}"


_CHECKS: dict[str, Callable[[Any, str], tuple[bool, Any]]] = {
    "double": _check_number,
    "float": _check_number,
    "long": _check_integer,
    "integer": _check_integer,
    "string": _check_string,
    "boolean": _check_boolean,
    "datetime": _check_datetime,
    "binary": _check_binary,
}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + ", …" if len(names) > _NAMES_SHOWN else shown
