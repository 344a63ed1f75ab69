"""Typed settings shared by the services.

Each service owns one ``BaseSettings`` class with its own env prefix; the S3, MLflow and database
settings below are shared and read from their own prefixes (``S3_``, ``MLFLOW_``, ``PLATFORM_DB_``)
so one ``mlops env`` configures every service the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, Self, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["dev", "test", "prod"]

T = TypeVar("T", bound=BaseSettings)


def from_env(cls: type[T]) -> Callable[[], T]:
    """``default_factory`` for a nested settings class whose required fields come from the env."""

    def build() -> T:
        return cls()

    return build


# Values that are fine on a laptop and dangerous anywhere else.
PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "minioadmin", ""})


class S3Settings(BaseSettings):
    """Where the object store is and how to sign requests to it (MinIO, SeaweedFS or AWS)."""

    model_config = SettingsConfigDict(env_prefix="S3_", extra="ignore")

    endpoint_url: str | None = None
    access_key_id: str
    secret_access_key: SecretStr
    region: str = "us-east-1"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 5


class MLflowSettings(BaseSettings):
    """The MLflow tracking server (also the model registry)."""

    model_config = SettingsConfigDict(env_prefix="MLFLOW_", extra="ignore")

    tracking_uri: str = "http://127.0.0.1:5050"
    # The names MLflow's own client reads, so one environment serves both.
    tracking_username: str | None = None
    tracking_password: SecretStr | None = None

    def basic_auth(self) -> httpx.BasicAuth | None:
        """Credentials for a tracking server running MLflow's basic-auth app, if configured."""
        if not self.tracking_username or self.tracking_password is None:
            return None
        return httpx.BasicAuth(self.tracking_username, self.tracking_password.get_secret_value())


class DatabaseSettings(BaseSettings):
    """The platform's own PostgreSQL database (jobs, audit records)."""

    model_config = SettingsConfigDict(env_prefix="PLATFORM_DB_", extra="ignore")

    url: SecretStr = Field(
        description="SQLAlchemy URL, e.g. postgresql+psycopg2://user:pass@127.0.0.1:5432/platform"
    )
    pool_size: int = 5


def refuse_placeholder_secrets(environment: Environment, **secrets: SecretStr | str | None) -> None:
    """Raise when a placeholder secret is used outside dev/test, naming the setting."""
    if environment in ("dev", "test"):
        return
    for name, value in secrets.items():
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or raw.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError(f"{name} is a placeholder secret; set a real value for {environment}")


def _secrets(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, SecretStr]]:
    """Every ``SecretStr`` field set on ``model`` and the settings nested in it."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield f"{prefix}{name}", value
        elif isinstance(value, BaseModel):
            yield from _secrets(value, f"{prefix}{name}.")


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``env_prefix``.

    Outside dev and test, every secret setting (any ``SecretStr``, nested ones included) is
    refused when it holds a placeholder such as ``changeme``.
    """

    model_config = SettingsConfigDict(extra="ignore")

    environment: Environment = "dev"
    host: str = "127.0.0.1"
    port: int
    log_level: str = "INFO"
    log_json: bool = False

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Self:
        refuse_placeholder_secrets(self.environment, **dict(_secrets(self)))
        return self
