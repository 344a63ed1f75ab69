"""Settings of the model gateway, read from ``GATEWAY_*`` (plus the shared ``MLFLOW_``, ``S3_``,
``PLATFORM_DB_`` prefixes)."""

from __future__ import annotations

from typing import Self

from mlops_common.settings import (
    DatabaseSettings,
    MLflowSettings,
    S3Settings,
    ServiceSettings,
    from_env,
    refuse_placeholder_secrets,
)
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = 8820
    mlflow: MLflowSettings = Field(default_factory=MLflowSettings)
    # S3 and database settings have required fields, which pydantic's Field stubs reject here.
    s3: S3Settings = Field(default_factory=from_env(S3Settings))
    db: DatabaseSettings = Field(default_factory=from_env(DatabaseSettings))

    artifacts_destination: str = Field(
        default="s3://mlflow",
        description="The MLflow server's --artifacts-destination; mlflow-artifacts:/ URIs map here",
    )
    mlflow_timeout_s: float = Field(default=10.0, gt=0)
    mlflow_retries: int = Field(default=3, ge=0, le=10)
    mlflow_max_concurrency: int = Field(
        default=8, ge=1, le=64, description="Concurrent MLflow calls when listing a model"
    )
    mlflow_search_page_size: int = Field(default=1000, ge=1, le=10_000)
    resolve_cache_size: int = Field(
        default=1024, ge=0, description="Resolved model versions kept in memory (0 disables)"
    )
    migrate_on_startup: bool = True
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body; a bigger one is a 413"
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis to publish alias moves on (redis://, rediss:// or unix://); "
        "unset disables publishing",
    )
    alias_channel: str = Field(
        default="mlops:alias-moves", min_length=1, description="Pub/sub channel of alias moves"
    )
    redis_timeout_s: float = Field(
        default=1.0, gt=0, le=30, description="Longest one alias-move publish may take"
    )
    token_cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        le=10,
        description="How long a checked token is trusted before the database is asked again "
        "(the longest a revocation takes to bite)",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # An empty GATEWAY_REDIS_URL= in an env file means "off", not a malformed URL.
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("artifacts_destination")
    @classmethod
    def _s3_destination(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"must be an s3://bucket[/prefix] URI, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _no_placeholder_db_password(self) -> Self:
        try:
            password = make_url(self.db.url.get_secret_value()).password
        except ArgumentError as exc:
            raise ValueError("PLATFORM_DB_URL is not a valid SQLAlchemy URL") from exc
        # A URL without a password (SQLite, peer or IAM auth) has nothing to check.
        if password is not None:
            refuse_placeholder_secrets(self.environment, PLATFORM_DB_URL_PASSWORD=password)
        return self
