"""The prediction log: one row per scored row, as Parquet files in S3, for the drift monitor.

Files: ``s3://<INFERENCE_PREDICTION_LOG_BUCKET>/predictions/<model>/date=YYYY-MM-DD/
<instance>-<UTC time>-<seq>.parquet`` (``date`` is the UTC day of the rows' ``ts``; ``instance``
is ``INFERENCE_INSTANCE_ID``, default ``<hostname>:<port>``, with ``:`` written ``-``). One file
holds one model version's rows. Columns, in this order:

=====================  =======================  ================================================
column                 type                     value
=====================  =======================  ================================================
``request_id``         string                   the request's ``X-Request-Id`` (request_ids.py)
``ts``                 timestamp[us, UTC]       when the prediction was made
``model``              string                   registered model name
``version``            int64                    its version
``alias``              string                   the alias it was served as
``latency_ms``         float64                  the request's time in the service, from its
                                                route starting (token checked) to the
                                                prediction being ready; the same for every
                                                row of a request
``feature.<name>``     per signature type       one column per input, named as in the model's
                                                signature and in its order (rows sent as lists
                                                are read in that order): double float64, float
                                                float32, long int64, integer int32, string
                                                string, boolean bool; other kinds as Arrow reads
                                                them. Null: the value was missing. A model
                                                without a signature: the rows' own keys (or
                                                positions 0, 1, ...)
``prediction``         the model's type         int64 or string (or bool) class labels as the
                                                classifier has them; float64 for regression
                                                (null where it was not finite)
``proba.<class>``      float64                  classifiers with predict_proba: one column per
                                                class, in the model's class order
=====================  =======================  ================================================

Nothing per request but ``PredictionLog.record`` runs on the request path: it keeps references
to the decoded input (the compiled path's arrays, or the validated DataFrame) and to the
``Prediction`` already made for the response. The writer thread of ``sink.RecordSink`` builds the
columns for thousands of requests at once. Records that do not fit (the writer is behind, or S3
is down) are dropped and counted in ``inference_prediction_log_records_total{outcome}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from itertools import chain, groupby, repeat
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from inference.errors import describe_exception
from inference.fastpath import NUMERIC_KINDS, Decoded
from inference.model import Prediction, ServedModel
from inference.sink import Batch, RecordSink
from inference.validation import InputSchema

Inputs = Decoded | pd.DataFrame

# Signature kinds -> the column type every file uses for them, whichever path decoded the rows.
ARROW_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "string": pa.string(),
    "boolean": pa.bool_(),
}
TIMESTAMP = pa.timestamp("us", tz="UTC")
_DAY_S = 86_400

log = logging.getLogger(__name__)


class PredictionRecord(NamedTuple):
    """One request's scored rows, as references to what serving it computed anyway."""

    request_id: str
    ts: float  # seconds since the epoch
    latency_ms: float
    model: ServedModel
    inputs: Inputs
    prediction: Prediction
    rows: int


class PredictionLog:
    def __init__(self, sink: RecordSink[PredictionRecord]) -> None:
        self.sink = sink

    def record(
        self,
        request_id: str,
        started: float,
        model: ServedModel,
        inputs: Inputs,
        prediction: Prediction,
    ) -> None:
        """Log one request's rows (``started``: ``time.perf_counter()`` when it began)."""
        rows = len(prediction.predictions)
        latency_ms = (time.perf_counter() - started) * 1000.0
        record = PredictionRecord(
            request_id, time.time(), latency_ms, model, inputs, prediction, rows
        )
        self.sink.add(record, rows)


# ---- records -> Arrow, in the writer thread -----------------------------------------------------
def prediction_batches(records: Sequence[PredictionRecord]) -> list[Batch]:
    """One table per model version and UTC day, rows in the order they were recorded.

    A group that cannot be converted (a model without a signature sent values Arrow cannot put
    in one column) is left out, and its rows count as dropped; the other groups are written.
    """
    groups: dict[tuple[int, int], list[PredictionRecord]] = {}
    for record in records:
        groups.setdefault((id(record.model), int(record.ts // _DAY_S)), []).append(record)
    batches = []
    for (_, day), group in groups.items():
        meta = group[0].model.meta
        try:
            table = prediction_table(group)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            log.warning(
                "prediction log: %s v%s rows cannot be written as one table: %s",
                meta.name,
                meta.version,
                describe_exception(exc),
            )
            continue
        batches.append(Batch(meta.name, _utc_day(day), table))
    return batches


def prediction_table(records: Sequence[PredictionRecord]) -> pa.Table:
    """The rows of ``records``, all scored by the same model, in the layout above."""
    model = records[0].model
    meta = model.meta
    counts = np.fromiter((r.rows for r in records), dtype=np.int64, count=len(records))
    total = int(counts.sum())
    ts_us = np.fromiter((round(r.ts * 1e6) for r in records), dtype=np.int64, count=len(records))
    latency = np.fromiter((r.latency_ms for r in records), dtype=np.float64, count=len(records))
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(
            list(chain.from_iterable(repeat(r.request_id, r.rows) for r in records)), pa.string()
        ),
        "ts": pa.array(np.repeat(ts_us, counts)).cast(TIMESTAMP),
        "model": pa.array([meta.name] * total, pa.string()),
        "version": pa.array(np.full(total, meta.version, dtype=np.int64)),
        "alias": pa.array([meta.alias] * total, pa.string()),
        "latency_ms": pa.array(np.repeat(latency, counts)),
    }
    columns.update(_feature_columns(model.input_schema, [r.inputs for r in records]))
    columns.update(_prediction_columns([r.prediction for r in records], counts))
    return pa.table(columns)


def _utc_day(day: int) -> date:
    return datetime.fromtimestamp(day * _DAY_S, UTC).date()


def _feature_columns(schema: InputSchema | None, inputs: list[Inputs]) -> dict[str, pa.Array]:
    # Runs of the same kind keep the rows in order; a model's requests almost always take one.
    tables = [
        _decoded_table(schema, list(run)) if is_decoded else _frame_table(schema, list(run))
        for is_decoded, run in groupby(inputs, key=lambda item: isinstance(item, Decoded))
    ]
    table = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    return {f"feature.{name}": table.column(name).combine_chunks() for name in table.column_names}


def _decoded_table(schema: InputSchema | None, decoded: list[Any]) -> pa.Table:
    """The compiled path's arrays: numbers in one float matrix, strings in per-column lists."""
    # Only models with a named signature are compiled.
    assert schema is not None
    numeric = [c for c in schema.columns if c.type in NUMERIC_KINDS]
    strings = [c for c in schema.columns if c.type == "string"]
    matrix = (
        decoded[0].numeric if len(decoded) == 1 else np.concatenate([d.numeric for d in decoded])
    )
    by_column = np.ascontiguousarray(matrix.T)
    arrays: dict[str, pa.Array] = {}
    for i, column in enumerate(numeric):
        # NaN is how the decoder wrote a missing number.
        arrays[column.name] = pa.array(by_column[i], from_pandas=True)
    for j, column in enumerate(strings):
        values = list(chain.from_iterable(d.categorical[j] for d in decoded))
        arrays[column.name] = pa.array(values, pa.string(), from_pandas=True)
    return _typed(schema, pa.table({c.name: arrays[c.name] for c in schema.columns}))


def _frame_table(schema: InputSchema | None, frames: list[Any]) -> pa.Table:
    """Validated DataFrames (the general path), in signature order when there is one."""
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    frame = frame.rename(columns=str)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return _typed(schema, table) if schema is not None else table


def _typed(schema: InputSchema | None, table: pa.Table) -> pa.Table:
    """Every column of a known kind as that kind's type, so all files of a model agree."""
    if schema is None:
        return table
    fields = []
    for column in schema.columns:
        current = table.schema.field(column.name).type
        fields.append(pa.field(column.name, ARROW_TYPES.get(column.type, current)))
    return table.cast(pa.schema(fields))


def _prediction_columns(predictions: list[Prediction], counts: np.ndarray) -> dict[str, pa.Array]:
    values = pa.array(list(chain.from_iterable(p.predictions for p in predictions)))
    first = predictions[0]
    if first.classes is None and pa.types.is_null(values.type):
        values = values.cast(pa.float64())  # a regressor whose rows were all non-finite
    columns = {"prediction": values}
    classes = first.classes
    if classes is None or not any(p.probabilities is not None for p in predictions):
        return columns
    width = len(classes)
    blocks = [
        p.probabilities if p.probabilities is not None else [[None] * width] * int(n)
        for p, n in zip(predictions, counts, strict=True)
    ]
    # None (a non-finite probability) becomes NaN here, then null.
    matrix = np.array(list(chain.from_iterable(blocks)), dtype=np.float64).reshape(-1, width)
    by_class = np.ascontiguousarray(matrix.T)
    for k, label in enumerate(classes):
        columns[f"proba.{label}"] = pa.array(by_class[k], from_pandas=True)
    return columns
