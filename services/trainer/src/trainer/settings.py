"""Trainer settings (env prefix ``TRAINER_``); S3, MLflow and database settings are shared."""

from __future__ import annotations

from mlops_common.settings import (
    DatabaseSettings,
    MLflowSettings,
    S3Settings,
    ServiceSettings,
    from_env,
)
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from trainer.datasets import DEFAULT_DATASET_BUCKETS, DEFAULT_MAX_DATASET_BYTES, bucket_error


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore")

    port: int = 8810
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Longest wait for one broker call (connect, send, read); a frozen broker "
        "fails the call after this instead of hanging it",
    )
    dispatch_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often the API looks for jobs still to hand to the broker (a new job "
        "is sent at once), and checks the broker kept what it was sent",
    )
    health_timeout_s: float = Field(
        default=0.8,
        gt=0,
        le=10,
        description="GET /health answers within this, naming a dependency that did not",
    )
    db_retry_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="How long a worker retries a job's claim or outcome while the database "
        "cannot be reached, before it gives the job up to the stale-job recovery",
    )
    outage_retry_s: float = Field(
        default=180.0,
        ge=0,
        le=3600,
        description="How long a worker keeps retrying a job that failed because MLflow, S3, the "
        "gateway or the database was unavailable (not because of its data) before failing it",
    )
    mlflow_timeout_s: int = Field(
        default=60,
        ge=1,
        description="Timeout of one MLflow request (MLFLOW_HTTP_REQUEST_TIMEOUT, unless set)",
    )
    # Five retries with MLflow's doubling backoff (2, 4, 8, 16, 32 s) ride out about a minute of
    # MLflow or its database being down; a job then finishes instead of failing.
    mlflow_max_retries: int = Field(
        default=5,
        ge=0,
        le=10,
        description="Retries of a failed MLflow request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, unless set)",
    )
    gateway_url: str = "http://127.0.0.1:8820"
    # The trainer's own token for the gateway (scopes models:read and models:promote).
    gateway_token: SecretStr | None = None
    # The platform's Ed25519 model-signing key (base64); only the workers need it.
    signing_key: SecretStr | None = None
    token_cache_ttl_s: float = Field(
        default=5.0, gt=0, le=10, description="How long a checked API token is trusted"
    )
    experiment_name: str = "trainer"
    image: str | None = Field(
        default=None,
        max_length=500,
        description="The image this worker runs (TRAINER_IMAGE, e.g. its tag or digest), "
        "tagged on every run it trains as mlops.image",
    )
    # A job whose worker died is retried this many times in all, then marked failed.
    max_attempts: int = 2
    # A running job whose heartbeat is older than this is taken to have lost its worker.
    stale_after_s: float = 90.0
    heartbeat_interval_s: float = 10.0
    job_time_limit_s: int = 3600
    max_dataset_rows: int = 5_000_000
    dataset_buckets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DATASET_BUCKETS),
        min_length=1,
        description="Buckets data set URIs may name (JSON list in TRAINER_DATASET_BUCKETS)",
    )
    max_dataset_bytes: int = Field(
        default=DEFAULT_MAX_DATASET_BYTES,
        ge=1,
        description="Largest data set object; a bigger one is refused before it is downloaded",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body; a bigger one is a 413"
    )
    max_active_jobs: int = Field(
        default=1000,
        ge=1,
        description="Queued and running jobs at most; past it POST /v1/train is a 429",
    )
    queue_full_retry_after_s: int = Field(
        default=30, ge=1, le=3600, description="Retry-After of a 429 when the queue is full"
    )
    # Monitoring jobs (trainer.monitor): where inference's prediction log and feedback are.
    monitor_experiment: str = Field(
        default="monitoring", min_length=1, max_length=200, description="MLflow experiment"
    )
    monitor_log_bucket: str = Field(
        default="data",
        description="Bucket of the prediction log and feedback (INFERENCE_PREDICTION_LOG_BUCKET)",
    )
    monitor_max_rows: int = Field(
        default=500_000,
        ge=100,
        description="Most logged rows one monitoring job reads (the newest files first)",
    )
    mlflow: MLflowSettings = Field(default_factory=from_env(MLflowSettings))
    s3: S3Settings = Field(default_factory=from_env(S3Settings))
    db: DatabaseSettings = Field(default_factory=from_env(DatabaseSettings))

    def mlflow_client_env(self) -> dict[str, str]:
        """The variables MLflow's client reads its request bounds from (its defaults, 120 s and
        7 retries with doubling backoff, let one call hang a job for minutes)."""
        return {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.mlflow_timeout_s),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_max_retries),
        }

    @field_validator("monitor_log_bucket")
    @classmethod
    def _log_bucket(cls, value: str) -> str:
        if problem := bucket_error(value):
            raise ValueError(problem)
        return value

    @field_validator("dataset_buckets")
    @classmethod
    def _buckets(cls, value: list[str]) -> list[str]:
        for bucket in value:
            if problem := bucket_error(bucket):
                raise ValueError(problem)
        return value
