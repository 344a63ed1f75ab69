"""Trainer settings (env prefix ``TRAINER_``); S3, MLflow and database settings are shared."""

from __future__ import annotations

from mlops_common.settings import (
    DatabaseSettings,
    MLflowSettings,
    S3Settings,
    ServiceSettings,
    from_env,
)
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore")

    port: int = 8810
    broker_url: str = "redis://127.0.0.1:6379/0"
    gateway_url: str = "http://127.0.0.1:8820"
    # The trainer's own token for the gateway (scopes models:read and models:promote).
    gateway_token: SecretStr | None = None
    token_cache_ttl_s: float = Field(
        default=5.0, gt=0, le=10, description="How long a checked API token is trusted"
    )
    experiment_name: str = "trainer"
    # A job whose worker died is retried this many times in all, then marked failed.
    max_attempts: int = 2
    # A running job whose heartbeat is older than this is taken to have lost its worker.
    stale_after_s: float = 90.0
    heartbeat_interval_s: float = 10.0
    job_time_limit_s: int = 3600
    max_dataset_rows: int = 5_000_000
    mlflow: MLflowSettings = Field(default_factory=from_env(MLflowSettings))
    s3: S3Settings = Field(default_factory=from_env(S3Settings))
    db: DatabaseSettings = Field(default_factory=from_env(DatabaseSettings))
