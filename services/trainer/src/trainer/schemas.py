"""Request and response bodies of the trainer API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.algorithms import ALL_METRICS, ALL_NAMES
from trainer.datasets import BUILTIN_DATASETS

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ALIAS = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"


class DatasetSpec(BaseModel):
    """Either ``{"builtin": NAME}`` or ``{"uri": "s3://…csv|parquet", "target": COLUMN}``."""

    model_config = ConfigDict(extra="forbid")

    builtin: str | None = Field(
        default=None, description=f"one of: {', '.join(sorted(BUILTIN_DATASETS))}"
    )
    uri: str | None = Field(default=None, description="s3://bucket/key.csv or .parquet")
    target: str | None = Field(
        default=None, min_length=1, description="column to predict (with uri)"
    )

    @field_validator("builtin")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in BUILTIN_DATASETS:
            known = ", ".join(sorted(BUILTIN_DATASETS))
            raise ValueError(f"unknown built-in data set {value!r}; known: {known}")
        return value

    @field_validator("uri")
    @classmethod
    def _s3_table(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith("s3://") or "/" not in value[len("s3://") :].strip("/"):
            raise ValueError("must be an s3://bucket/key URI")
        if not value.lower().endswith((".csv", ".parquet", ".pq")):
            raise ValueError("must point to a .csv or .parquet object")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.builtin is None) == (self.uri is None):
            raise ValueError('give exactly one of "builtin" or "uri"')
        if self.uri is not None and self.target is None:
            raise ValueError('"target" is required with "uri"')
        if self.builtin is not None and self.target is not None:
            raise ValueError('"target" applies only to "uri" data sets')
        return self


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(default="champion", pattern=ALIAS)
    metric: str | None = Field(default=None, description=f"one of: {', '.join(ALL_METRICS)}")
    min_improvement: float = Field(default=0.0, ge=0.0)

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "latest" or (value[0] == "v" and value[1:].isdigit()):
            raise ValueError(f"{value!r} is reserved by the MLflow registry")
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_METRICS:
            raise ValueError(f"unknown metric {value!r}; known: {', '.join(ALL_METRICS)}")
        return value


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(pattern=MODEL_NAME)
    dataset: DatasetSpec
    task: Literal["classification", "regression"] | None = None
    algorithm: str | None = Field(default=None, description=f"one of: {', '.join(ALL_NAMES)}")
    params: dict[str, Any] = Field(default_factory=dict)
    promote: Promotion | None = None
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    test_size: float = Field(default=0.2, gt=0.0, lt=0.9)
    random_state: int = 42

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_NAMES:
            raise ValueError(f"unknown algorithm {value!r}; known: {', '.join(ALL_NAMES)}")
        return value


JobStatus = Literal["queued", "running", "succeeded", "failed"]


class JobView(BaseModel):
    job_id: str
    status: JobStatus
    model_name: str
    attempts: int
    run_id: str | None = None
    model_version: int | None = None
    task: str | None = None
    algorithm: str | None = None
    metrics: dict[str, float] | None = None
    promoted: bool | None = None
    promotion: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
