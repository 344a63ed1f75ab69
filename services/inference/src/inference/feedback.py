"""Ground truth: labels for earlier predictions, stored beside the prediction log.

``POST /v1/feedback`` takes ``{"request_id": ..., "label": ...}`` or ``{"items": [...]}``; the
labels are buffered and written like the prediction log (``sink.RecordSink``) to
``s3://<INFERENCE_PREDICTION_LOG_BUCKET>/feedback/<model>/date=YYYY-MM-DD/<instance>-<UTC time>-
<seq>.parquet`` (``date``: the UTC day the label arrived). Columns, in this order:

================  ====================  =====================================================
column            type                  value
================  ====================  =====================================================
``request_id``    string                the ``request_id`` of the prediction log's rows it labels
``ts``            timestamp[us, UTC]    when the label arrived
``model``         string                the served model's name
``label``         as sent               int64 (integers only), float64 (any number with a
                                        fraction), string or bool; one type per file, so
                                        labels of different types in one flush go to
                                        separate files
================  ====================  =====================================================

A request's labels are kept all or none: when the buffer cannot take them the answer is 503
(retry later), counted nowhere; labels accepted and then not written (S3 down past the
retries) count in ``inference_feedback_records_total{outcome="dropped"}``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import orjson
import pyarrow as pa
from mlops_common.errors import ServiceUnavailable, Unprocessable
from pydantic import ValidationError

from inference.schemas import FeedbackBatch, FeedbackItem, Label
from inference.sink import Batch, RecordSink

TIMESTAMP = pa.timestamp("us", tz="UTC")
_DAY_S = 86_400
_SHOWN_ERRORS = 20


class FeedbackRecord(NamedTuple):
    """The labels of one request."""

    ts: float
    items: list[FeedbackItem]


class FeedbackHandler:
    def __init__(
        self, sink: RecordSink[FeedbackRecord], *, max_items: int, max_body_bytes: int
    ) -> None:
        self._sink = sink
        self.max_items = max_items
        self.max_body_bytes = max_body_bytes

    def accept(self, raw: bytes) -> int:
        """Validate a body and buffer its labels; how many were accepted."""
        items = parse_feedback(raw, self.max_items)
        if not self._sink.offer(FeedbackRecord(time.time(), items), len(items)):
            raise ServiceUnavailable(
                "the feedback buffer is full (the object store is slow or down); retry shortly"
            )
        return len(items)


def parse_feedback(raw: bytes, max_items: int) -> list[FeedbackItem]:
    """The labels of a body, or a 422 naming the first field that is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"malformed JSON: {exc}", field="body") from exc
    if not isinstance(body, dict):
        raise Unprocessable(
            'expected an object {"request_id": ..., "label": ...} or {"items": [...]}',
            field="body",
        )
    if "items" not in body:
        return [_validated(FeedbackItem, body)]
    items = body["items"]
    if isinstance(items, list) and len(items) > max_items:
        raise Unprocessable(
            f"at most {max_items} items per request, got {len(items)}; split them", field="items"
        )
    return _validated(FeedbackBatch, body).items


def _validated(model: type[Any], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [
            {"field": _field(err["loc"]), "message": err["msg"]}
            for err in exc.errors()[:_SHOWN_ERRORS]
        ]
        first = errors[0]
        raise Unprocessable(first["message"], field=first["field"], errors=errors) from exc


def _field(loc: Sequence[Any]) -> str:
    """``("items", 3, "label")`` -> ``items[3].label``, as ``/predict`` names rows."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# ---- records -> Arrow, in the writer thread -----------------------------------------------------
def feedback_batches(model_name: str, records: Sequence[FeedbackRecord]) -> list[Batch]:
    """One table per UTC day and label type."""
    groups: dict[tuple[int, str], list[tuple[float, FeedbackItem]]] = {}
    for record in records:
        day = int(record.ts // _DAY_S)
        for item in record.items:
            groups.setdefault((day, _kind(item.label)), []).append((record.ts, item))
    return [
        Batch(model_name, _utc_day(day), feedback_table(model_name, rows))
        for (day, _), rows in groups.items()
    ]


def feedback_table(model_name: str, rows: list[tuple[float, FeedbackItem]]) -> pa.Table:
    labels = [item.label for _, item in rows]
    label_type = _arrow_type(labels)
    return pa.table(
        {
            "request_id": pa.array([item.request_id for _, item in rows], pa.string()),
            "ts": pa.array([round(ts * 1e6) for ts, _ in rows], pa.int64()).cast(TIMESTAMP),
            "model": pa.array([model_name] * len(rows), pa.string()),
            "label": pa.array(labels, label_type),
        }
    )


def _kind(label: Label) -> str:
    # bool first: it is an int to Python.
    if isinstance(label, bool):
        return "bool"
    if isinstance(label, int | float):
        return "number"
    return "string"


def _arrow_type(labels: list[Label]) -> pa.DataType:
    first = labels[0]
    if isinstance(first, bool):
        return pa.bool_()
    if isinstance(first, str):
        return pa.string()
    if all(isinstance(label, int) for label in labels):
        return pa.int64()
    return pa.float64()


def _utc_day(day: int) -> date:
    return datetime.fromtimestamp(day * _DAY_S, UTC).date()
