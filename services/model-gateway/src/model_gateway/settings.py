"""Settings of the model gateway, read from ``GATEWAY_*`` (plus the shared ``MLFLOW_``, ``S3_``,
``PLATFORM_DB_`` prefixes)."""

from __future__ import annotations

from typing import Annotated, Self

from mlops_common.settings import (
    DatabaseSettings,
    MLflowSettings,
    S3Settings,
    ServiceSettings,
    from_env,
    refuse_placeholder_secrets,
)
from mlops_common.signing import ManifestVerifier
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
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
    trusted_signing_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Public keys (base64, comma-separated) whose signatures on model artifacts "
        "the lineage reports as verified; more than one while the signing key is rotated. Empty: "
        "signatures are reported as unverified",
    )
    served_by_window_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="An inference instance counts as serving a version when it reported so "
        "within this many seconds",
    )
    served_by_write_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Least time between two writes of one instance's unchanged report (each "
        "resolve carries one); must be below GATEWAY_SERVED_BY_WINDOW_S",
    )
    served_by_retention_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Reports older than this are deleted; must be at least "
        "GATEWAY_SERVED_BY_WINDOW_S",
    )

    @field_validator("trusted_signing_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_signing_keys")
    @classmethod
    def _valid_keys(cls, value: list[str]) -> list[str]:
        if value:
            ManifestVerifier(value)  # a malformed key fails at start-up, not on a lineage call
        return value

    @model_validator(mode="after")
    def _served_by_intervals(self) -> Self:
        if self.served_by_write_interval_s >= self.served_by_window_s:
            raise ValueError(
                "GATEWAY_SERVED_BY_WRITE_INTERVAL_S must be below GATEWAY_SERVED_BY_WINDOW_S, or "
                "instances that keep reporting would drop out of served_by"
            )
        if self.served_by_retention_s < self.served_by_window_s:
            raise ValueError(
                "GATEWAY_SERVED_BY_RETENTION_S must be at least GATEWAY_SERVED_BY_WINDOW_S"
            )
        return self

    def manifest_verifier(self) -> ManifestVerifier | None:
        """The verifier of the trusted keys, or None when no key is configured."""
        return ManifestVerifier(self.trusted_signing_keys) if self.trusted_signing_keys else None

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
