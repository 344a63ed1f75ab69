"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# MLflow stores versions in a 32-bit integer column.
MAX_VERSION = 2_147_483_647


class ResolvedAlias(BaseModel):
    name: str
    version: int
    alias: str
    run_id: str | None
    artifact_uri: str = Field(description="s3://bucket/key of the model version's artifacts")
    flavor: str = Field(description="sklearn when the model has that flavor, else python_function")
    flavors: list[str]
    signature: dict[str, Any] | None = Field(
        description="inputs, outputs and params parsed from the MLmodel file, or null"
    )
    model_id: str | None
    source: str | None
    created_at: datetime | None


class MoveAliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION, description="Model version the alias should name")
    reason: str | None = Field(default=None, max_length=2000)

    @field_validator("version", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # Pydantic's lax mode would read true as version 1.
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value


class AliasMove(BaseModel):
    name: str
    alias: str
    version: int
    previous_version: int | None
    moved: bool = Field(description="false when the alias already named this version")
    moved_at: datetime | None
    actor: str
    audit_id: int | None


class AuditEntry(BaseModel):
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str | None
    moved_at: datetime


class AuditHistory(BaseModel):
    name: str
    records: list[AuditEntry]


class VersionSummary(BaseModel):
    version: int
    run_id: str | None
    status: str | None
    aliases: list[str]
    metrics: dict[str, float | None] = Field(description="latest value of each run metric")
    params: dict[str, str]
    created_at: datetime | None
    source: str | None
    model_id: str | None


class ModelDetail(BaseModel):
    name: str
    description: str | None
    aliases: dict[str, int]
    versions: list[VersionSummary]


CheckState = Literal["ok", "error"]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    mlflow: CheckState
    database: CheckState


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Shape of every error body (``mlops_common.errors``)."""

    error: ErrorDetail
