"""Request and response bodies of the trainer API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from mlops_common.datasets import BUILTIN_TASKS
from mlops_common.names import (
    MAX_ALIAS_LENGTH,
    MAX_NEW_MODEL_NAME_LENGTH,
    NEW_MODEL_NAME_PATTERN,
    SETTABLE_ALIAS_PATTERN,
    alias_error,
)
from mlops_common.promotion import ALL_METRICS
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.algorithms import ALL_NAMES, params_json_schema
from trainer.datasets import MAX_URI_LENGTH, URI_PATTERN, check_dataset_uri

# Printable text: PostgreSQL refuses NUL, and no other control character belongs in these fields.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Airflow's own rule for DAG ids (KEY_REGEX).
DAG_ID = r"^[A-Za-z0-9_.-]+$"
MANIFEST_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\x00-\x1f\x7f-\x9f]*\.json$"
MAX_PARAMS = 64


class DatasetSpec(BaseModel):
    """Either ``{"builtin": NAME}`` or ``{"uri": "s3://…csv|parquet", "target": COLUMN}``, the
    latter optionally with ``test_uri``: a held-out split (the ETL's) to evaluate on."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["builtin"],
                    "properties": {
                        "builtin": {"type": "string"},
                        "uri": {"type": "null"},
                        "target": {"type": "null"},
                        "test_uri": {"type": "null"},
                    },
                },
                {
                    "required": ["uri", "target"],
                    "properties": {
                        "builtin": {"type": "null"},
                        "uri": {"type": "string"},
                        "target": {"type": "string"},
                    },
                },
            ]
        },
    )

    builtin: str | None = Field(
        default=None,
        max_length=64,
        description=f"one of: {', '.join(sorted(BUILTIN_TASKS))}",
        json_schema_extra={"enum": [*sorted(BUILTIN_TASKS), None]},
    )
    uri: str | None = Field(
        default=None,
        max_length=MAX_URI_LENGTH,
        description="s3://bucket/key.csv or .parquet, in a bucket the trainer reads data sets "
        "from (TRAINER_DATASET_BUCKETS, default: data); no '.', '..' or empty key segments",
        json_schema_extra={"pattern": URI_PATTERN},
    )
    target: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=PRINTABLE,
        description="column to predict (with uri)",
    )
    test_uri: str | None = Field(
        default=None,
        max_length=MAX_URI_LENGTH,
        description="with uri: the held-out rows (same columns), e.g. the ETL's test split. The "
        "job then trains on all of uri (test_size is not used), reports its metrics on these rows "
        "and scores the champion on them too. Same rules as uri (bucket included)",
        json_schema_extra={"pattern": URI_PATTERN},
    )

    @field_validator("builtin")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in BUILTIN_TASKS:
            known = ", ".join(sorted(BUILTIN_TASKS))
            raise ValueError(f"unknown built-in data set {value!r}; known: {known}")
        return value

    @field_validator("uri", "test_uri")
    @classmethod
    def _s3_table(cls, value: str | None) -> str | None:
        if value is not None:
            check_dataset_uri(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.builtin is None) == (self.uri is None):
            raise ValueError('give exactly one of "builtin" or "uri"')
        if self.uri is not None and self.target is None:
            raise ValueError('"target" is required with "uri"')
        if self.builtin is not None and self.target is not None:
            raise ValueError('"target" applies only to "uri" data sets')
        if self.builtin is not None and self.test_uri is not None:
            raise ValueError('"test_uri" applies only to "uri" data sets')
        return self


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(
        default="champion",
        max_length=MAX_ALIAS_LENGTH,
        description="alias to move: not 'latest' nor v<N> (in any case), which MLflow reserves",
        json_schema_extra={"pattern": SETTABLE_ALIAS_PATTERN},
    )
    metric: str | None = Field(
        default=None,
        max_length=64,
        description=f"one of: {', '.join(ALL_METRICS)}",
        json_schema_extra={"enum": [*ALL_METRICS, None]},
    )
    min_improvement: float = Field(default=0.0, ge=0.0, le=1e12, allow_inf_nan=False)
    move_alias: bool = Field(
        default=True,
        description="false: decide only. The job scores challenger and champion on the same "
        "rows and reports the decision (promotion.promote) but leaves the alias where it is, "
        "for a caller that moves it itself (the train_and_promote DAG)",
    )

    @field_validator("alias")
    @classmethod
    def _settable(cls, value: str) -> str:
        # The gateway's own rule: a job never trains a version it could not then promote.
        if problem := alias_error(value, for_write=True):
            raise ValueError(problem)
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_METRICS:
            raise ValueError(f"unknown metric {value!r}; known: {', '.join(ALL_METRICS)}")
        return value


class Lineage(BaseModel):
    """Where a job came from, when a pipeline submitted it: tagged on the run and the version."""

    model_config = ConfigDict(extra="forbid")

    dag_id: str = Field(
        min_length=1,
        max_length=250,
        pattern=DAG_ID,
        description="Airflow DAG id (mlops.dag_id)",
    )
    dag_run_id: str = Field(
        min_length=1,
        max_length=250,
        pattern=PRINTABLE,
        description="Airflow DAG run id (mlops.dag_run_id)",
    )
    etl_manifest: str | None = Field(
        default=None,
        max_length=MAX_URI_LENGTH,
        pattern=MANIFEST_URI,
        description="s3:// URI of the ETL's manifest.json (mlops.etl_manifest)",
    )
    reason: str | None = Field(
        default=None,
        max_length=2000,
        pattern=PRINTABLE,
        description="why the pipeline trained (e.g. the drift monitor's finding): "
        "mlops.trigger_reason",
    )


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(max_length=MAX_NEW_MODEL_NAME_LENGTH, pattern=NEW_MODEL_NAME_PATTERN)
    dataset: DatasetSpec
    task: Literal["classification", "regression"] | None = None
    algorithm: str | None = Field(
        default=None,
        max_length=64,
        description=f"one of: {', '.join(ALL_NAMES)}",
        json_schema_extra={"enum": [*ALL_NAMES, None]},
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_PARAMS,
        description="estimator parameters: each algorithm takes its own, within bounds "
        "(n_jobs and verbose are set by the platform)",
        json_schema_extra=params_json_schema(),
    )
    promote: Promotion | None = None
    lineage: Lineage | None = Field(
        default=None, description="set by pipelines (the train_and_promote DAG); tags only"
    )
    idempotency_key: (
        Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)] | None
    ) = None
    test_size: float = Field(default=0.2, gt=0.0, lt=0.9)
    random_state: int = Field(default=42, ge=0, le=2**32 - 1)

    @field_validator("params", mode="before")
    @classmethod
    def _param_names(cls, value: Any) -> Any:
        # Checked before pydantic looks at the keys: an error located at a key holding a lone
        # surrogate could not even be rendered as JSON.
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str) or not re.fullmatch(PARAM_NAME, key):
                    shown = repr(key)[:70]
                    raise ValueError(f"parameter name {shown} is not a Python identifier")
        return value

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_NAMES:
            raise ValueError(f"unknown algorithm {value!r}; known: {', '.join(ALL_NAMES)}")
        return value


class MonitorRequest(BaseModel):
    """What ``POST /v1/monitor`` takes: which served model, which window, which thresholds."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(max_length=MAX_NEW_MODEL_NAME_LENGTH, pattern=NEW_MODEL_NAME_PATTERN)
    alias: str = Field(
        default="champion",
        max_length=MAX_ALIAS_LENGTH,
        description="the alias whose version is compared with its training data",
    )
    window_hours: float = Field(
        default=1.0,
        gt=0,
        le=24 * 31,
        description="the window ends at `end` (default: now) and starts this much earlier, "
        "unless `start` is given",
    )
    start: AwareDatetime | None = Field(default=None, description="window start (ISO 8601, UTC)")
    end: AwareDatetime | None = Field(default=None, description="window end (default: now)")
    min_rows: int = Field(
        default=100, ge=10, le=10_000_000, description="fewer logged rows: no drift figure"
    )
    min_labels: int = Field(
        default=30,
        ge=1,
        le=10_000_000,
        description="fewer labelled one-row requests of a version: no live figure for it",
    )
    max_drift_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="retrain when at least this share of the features drifted",
    )
    max_quality_drop: float = Field(
        default=0.1,
        gt=0,
        le=1e6,
        description="retrain when the served version's live metric is this much worse than "
        "its run's, relative to it (0.1: 10% worse)",
    )
    idempotency_key: (
        Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)] | None
    ) = None

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if problem := alias_error(value, for_write=False):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError('"start" must be before "end"')
        return self


JobStatus = Literal["queued", "running", "succeeded", "failed"]
JobKind = Literal["train", "monitor"]


class JobView(BaseModel):
    job_id: str
    kind: JobKind = "train"
    status: JobStatus
    model_name: str
    attempts: int
    worker: str | None = Field(
        default=None,
        description="the worker process that ran (or runs) the latest attempt: "
        "trainer@<host>/<worker pid>.<incarnation>/<pid>; null until one claims the job",
    )
    run_id: str | None = None
    model_version: int | None = None
    task: str | None = None
    algorithm: str | None = None
    metrics: dict[str, float] | None = None
    promoted: bool | None = Field(
        default=None,
        description="whether this job moved the alias (false with move_alias: false; "
        "promotion.promote is the decision); null when no promotion was asked for",
    )
    promotion: dict[str, Any] | None = Field(
        default=None,
        description="the champion/challenger decision: alias, metric, candidate_value and "
        "current_value (both scored on the same rows), promote, moved, reason, and comparison "
        "(rows_source, rows, rows_digest, candidate_metrics, champion_metrics, champion_error)",
    )
    result: dict[str, Any] | None = Field(
        default=None,
        description="monitoring jobs: version, window, rows, reference, drift (share, drifted, "
        "features), quality (per version), decision (retrain, reasons), notes, run_id",
    )
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


Probe = Literal["ok", "unavailable", "timeout"]


class HealthView(BaseModel):
    """``GET /health``: 503 only when the database is not ``ok`` (no job can be accepted); a
    missing broker or worker is ``degraded`` (200): jobs are accepted and kept until it is back."""

    status: Literal["ok", "degraded", "unavailable"]
    database: Probe
    broker: Probe
    workers: list[str] = Field(description="Workers that answered a ping")
    pending_dispatch: int | None = Field(
        description="Queued jobs not handed to the broker yet; null when the database did not answer"
    )
    degraded: list[str] = Field(description="One line per dependency that is not ok")
