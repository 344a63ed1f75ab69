"""Request and response bodies of the HTTP API (what /openapi.json documents)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
