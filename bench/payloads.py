"""Request bodies for each server's protocol, built from the same rows, and their predictions.

- ``inference``: this platform's ``POST /predict`` with ``{"instances": [{column: value}, …]}``.
- ``mlflow``: ``mlflow models serve``'s ``POST /invocations`` with ``dataframe_split``.
- ``v2``: the Open Inference Protocol (MLServer) ``POST /v2/models/<name>/infer`` with one named
  input per column (pandas-style, ``content_type: pd``), BYTES for string columns.

Missing values are JSON ``null`` in every protocol.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import pandas as pd

Protocol = Literal["inference", "mlflow", "v2"]

# MLflow column types -> Open Inference Protocol datatypes.
V2_DATATYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
}


def _plain(value: Any) -> Any:
    """A JSON value for one cell: numpy scalars to Python, NaN/None/NA to None."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(col): _plain(val) for col, val in zip(rows.columns, row, strict=True)}
        for row in rows.itertuples(index=False, name=None)
    ]


def _matrix(rows: pd.DataFrame) -> list[list[Any]]:
    return [[_plain(val) for val in row] for row in rows.itertuples(index=False, name=None)]


def build_body(
    protocol: Protocol, rows: pd.DataFrame, columns: list[tuple[str, str]]
) -> dict[str, Any]:
    """The request body that asks ``protocol``'s server to score ``rows``."""
    if protocol == "inference":
        return {"instances": _records(rows)}
    if protocol == "mlflow":
        return {
            "dataframe_split": {"columns": [str(c) for c in rows.columns], "data": _matrix(rows)}
        }
    types = dict(columns)
    inputs = []
    for name in rows.columns:
        kind = types.get(str(name), "double")
        inputs.append(
            {
                "name": str(name),
                "datatype": V2_DATATYPES.get(kind, "BYTES"),
                "shape": [len(rows), 1],
                "data": [_plain(v) for v in rows[name].tolist()],
            }
        )
    return {"inputs": inputs, "parameters": {"content_type": "pd"}}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def predictions_of(protocol: Protocol, response: dict[str, Any]) -> list[Any]:
    """The predicted labels (or values) in a server's response, one per row."""
    if protocol in ("inference", "mlflow"):
        predictions = response.get("predictions")
        if isinstance(predictions, dict):  # pyfunc models returning a frame: first column
            predictions = next(iter(predictions.values()))
        if not isinstance(predictions, list):
            raise ValueError(f"no predictions list in {str(response)[:300]}")
        return [p[0] if isinstance(p, list) and len(p) == 1 else p for p in predictions]
    outputs = response.get("outputs") or []
    if not outputs:
        raise ValueError(f"no outputs in {str(response)[:300]}")
    data = outputs[0].get("data")
    if not isinstance(data, list):
        raise ValueError(f"output has no data list: {str(outputs[0])[:300]}")
    return data


def probabilities_of(response: dict[str, Any]) -> list[list[float]] | None:
    """This platform's ``probabilities`` (the others return labels only)."""
    value = response.get("probabilities")
    return value if isinstance(value, list) else None
