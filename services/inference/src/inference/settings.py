"""Settings of the inference service, read from ``INFERENCE_*`` (and ``S3_*``) variables."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from mlops_common.settings import S3Settings, ServiceSettings, from_env
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME`` or ``~/.cache``; the temp dir when there is no usable home."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "mlops-inference"
    try:
        return Path.home() / ".cache" / "mlops-inference"
    except RuntimeError:  # no HOME and no passwd entry (some containers)
        return Path(tempfile.gettempdir()) / "mlops-inference"


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")

    port: int = 8800
    model_name: str = Field(min_length=1, description="Registered model to serve")
    model_alias: str = Field(default="champion", min_length=1)
    gateway_url: str = "http://127.0.0.1:8820"
    # Inference's own token: resolves its alias (models:read) and checks callers' tokens
    # (tokens:introspect) at the gateway.
    gateway_token: SecretStr | None = None
    # Off only on purpose (a private benchmark, a mesh doing auth): logs a warning every start.
    auth_enabled: bool = True
    token_cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        le=10,
        description="How long a checked caller token is trusted before the gateway is asked again",
    )
    poll_interval_s: float = Field(default=2.0, gt=0)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    s3: S3Settings = Field(default_factory=from_env(S3Settings))
    max_batch_rows: int = Field(default=10_000, ge=1)
    # Bodies above this are refused (413) while they arrive, before they are buffered whole.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Serve supported pipelines through the compiled numpy path (checked against scikit-learn).
    fast_path: bool = True
    # Adaptive batching of concurrent requests: "auto" turns it on for models whose own
    # per-call cost dominates (measured at load), where it raises throughput and evens out tails.
    batching: Literal["auto", "on", "off"] = "auto"
    batch_max_size: int = Field(default=1024, ge=1, description="rows per batched model call")
    batch_max_wait_ms: float = Field(default=2.0, ge=0, description="wait for more rows")
    batch_auto_threshold_ms: float = Field(default=0.5, gt=0)
    # Requests allowed to wait for the model; beyond it the service answers 503 + Retry-After
    # instead of queueing without bound.
    max_queued_requests: int = Field(default=256, ge=1)
    # Alias-move events published by the gateway; unset: polling alone.
    redis_url: str | None = None
    alias_channel: str = "mlops:alias-moves"

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: Path) -> Path:
        # Resolved once here so a later chdir (or a relative env value) cannot move the cache.
        return value.expanduser().absolute()
