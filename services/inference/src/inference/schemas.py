"""Request and response bodies of the HTTP API (what /openapi.json documents)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic_core import PydanticCustomError

from inference.request_ids import PATTERN as REQUEST_ID_PATTERN

_ROW_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "description": "{feature: value}; null for a missing value"},
        {"type": "array", "description": "values in signature order"},
    ]
}


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"instances": [{"age": 42, "city": "Lyon", "income": None}]},
                {"instances": [[42, "Lyon", None]]},
            ]
        },
    )

    # Rows are checked against the model's signature by the handler, not here: the signature is
    # only known at run time, and errors must name the row and feature (instances[3].age).
    instances: list[Any] = Field(
        description=(
            "Rows to score: all objects {feature: value} or all lists of values in signature "
            "order (see GET /model-info)."
        ),
        json_schema_extra={"items": _ROW_SCHEMA},
    )


class ModelRef(BaseModel):
    name: str
    version: int
    alias: str


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per row (class label or number)")
    probabilities: list[list[float | None]] | None = Field(
        default=None, description="Classifiers: per-row class probabilities, in `classes` order"
    )
    classes: list[Any] | None = Field(default=None, description="Classifiers: the class labels")
    model: ModelRef
    request_id: str = Field(
        description="This request's id, also in the X-Request-Id header: the client's own when "
        "it sent a short safe one (letters, digits, `.`, `_`, `-`; at most 64), else a new one. "
        "Send it with the true label to POST /v1/feedback"
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "loading", "unavailable"] = Field(
        description=(
            "ok: a model is served and everything it depends on answers. degraded (still 200): "
            "a model is served, but the gateway, MLflow behind it or the object store cannot "
            "be used, or the model was loaded from the local cache and the registry has not "
            "confirmed it yet; `degraded` says which. loading, unavailable (503): no model"
        )
    )
    model: ModelRef | None = None
    source: Literal["registry", "cache"] | None = Field(
        default=None,
        description=(
            "Where the served model came from: the registry, or the local cache (loaded while "
            "the registry or the object store could not be asked, not yet confirmed)"
        ),
    )
    degraded: list[str] = Field(
        default_factory=list,
        description='What cannot be used right now, each as "<dependency>: <why>"',
    )
    last_error: str | None = Field(
        default=None, description="Why the newest version is not served (or the gateway failed)"
    )
    pending_version: int | None = Field(
        default=None, description="Version the alias points to that is not (yet) served"
    )
    message: str | None = None
    rollout: RolloutState | None = Field(
        default=None, description="The rollout this instance follows; null: none"
    )


class VariantState(BaseModel):
    alias: str
    weight: int | None = Field(default=None, description="share of requests, in percent")
    version: int | None = Field(description="version served; null: not loaded, champion answers")
    ready: bool
    requests: int = Field(description="requests it answered or failed in this revision")
    errors: int = Field(description="of those, requests it failed and champion answered")
    last_error: str | None = None


class RolloutState(BaseModel):
    revision: int
    variants: list[VariantState]
    mirror: VariantState | None
    sticky_header: str | None
    guard: dict[str, Any] | None
    tripped: str | None = Field(
        description="the guard tripped here (variant: why): every request to champion"
    )
    last_error: str | None = Field(description="why the gateway could not be asked, if so")


class ModelInfo(BaseModel):
    name: str
    version: int
    alias: str
    run_id: str | None
    artifact_uri: str
    flavor: str
    signature: dict[str, Any] | None
    loaded_at: datetime
    manifest_sha256: str | None = Field(
        default=None, description="Digest of the signed manifest the served files matched"
    )
    signed_by: str | None = Field(default=None, description="Id of the key that signed it")


# ---- feedback -----------------------------------------------------------------------------------
MAX_LABEL_LENGTH = 1024
_INT64 = (-(2**63), 2**63 - 1)


def _check_label(value: Any) -> Any:
    """A label is one JSON scalar that fits a Parquet column: no null, no huge integer."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= MAX_LABEL_LENGTH:
        return value
    raise PydanticCustomError(
        "label",
        "expected a string (at most {limit} characters), a 64-bit integer, a number or a "
        "boolean, got {got}",
        {"limit": MAX_LABEL_LENGTH, "got": _describe_label(value)},
    )


def _describe_label(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, int):
        return "an integer out of range"
    return type(value).__name__ if not isinstance(value, list | dict) else "an array or object"


Label = Annotated[StrictBool | StrictInt | StrictFloat | StrictStr, BeforeValidator(_check_label)]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"request_id": "3f2a9c0e5b7d41a8000001c4", "label": 1}]},
    )

    request_id: str = Field(
        pattern=REQUEST_ID_PATTERN,
        description="The request id of the prediction (its X-Request-Id / body `request_id`)",
    )
    label: Label = Field(
        description="The true value: a class label or a number; its JSON type is kept"
    )


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(
        min_length=1, description="Labels, at most INFERENCE_FEEDBACK_MAX_ITEMS (10 000)"
    )


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="Labels accepted, to be written within the flush interval")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place, for ``openapi_extra`` (whose
    schemas cannot point into a ``$defs`` of their own)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
