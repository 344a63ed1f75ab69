"""Settings of the inference service, read from ``INFERENCE_*`` (and ``S3_*``) variables."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Self

from mlops_common.settings import S3Settings, ServiceSettings, from_env
from mlops_common.signing import ManifestVerifier
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME`` or ``~/.cache``; the temp dir when there is no usable home."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "mlops-inference"
    try:
        return Path.home() / ".cache" / "mlops-inference"
    except RuntimeError:  # no HOME and no passwd entry (some containers)
        return Path(tempfile.gettempdir()) / "mlops-inference"


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")

    port: int = 8800
    model_name: str = Field(min_length=1, description="Registered model to serve")
    model_alias: str = Field(default="champion", min_length=1)
    gateway_url: str = "http://127.0.0.1:8820"
    # Inference's own token: resolves its alias and reads the rollout (models:read), checks
    # callers' tokens (tokens:introspect) and ends a rollout whose guard trips (rollouts:abort)
    # at the gateway.
    gateway_token: SecretStr | None = None
    # Off only on purpose (a private benchmark, a mesh doing auth): logs a warning every start.
    auth_enabled: bool = True
    token_cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        le=10,
        description="How long a checked caller token is trusted before the gateway is asked again",
    )
    token_stale_grace_s: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="While the gateway cannot check tokens, callers whose token it found valid "
        "within this many seconds are still served (kept across restarts in the cache folder); "
        "0 refuses everyone until the gateway answers. A revocation made during a gateway outage "
        "bites once it answers again or this grace runs out",
    )
    # Public keys (base64, comma-separated) whose signatures on model artifacts are trusted;
    # more than one while the signing key is rotated (docs/security.md).
    trusted_signing_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Off only on purpose (serving models registered outside the trainer): logs a warning.
    require_signed_models: bool = True
    poll_interval_s: float = Field(default=2.0, gt=0)
    gateway_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest one resolve of the alias at the gateway may take, retries included",
    )
    # A version whose download failed because the object store could not be asked is tried
    # again after this, doubling up to the max; a refused or broken version waits minutes.
    store_retry_base_s: float = Field(default=1.0, gt=0)
    store_retry_max_s: float = Field(default=10.0, gt=0)
    # After SIGTERM: new connections are refused at once, requests in flight get this long to
    # finish (then they are cancelled), and the process exits.
    shutdown_grace_s: float = Field(default=15.0, gt=0)
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
    # Follow the model's rollout (canary, A/B, mirror) as the gateway states it. Only an instance
    # serving champion follows one; an instance pinned to another alias serves that alias only.
    follow_rollouts: bool = True
    # Copies of requests waiting for the rollout's mirror; more are dropped (and counted).
    mirror_max_queued: int = Field(default=1024, ge=1)
    mirror_max_queued_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Alias-move events published by the gateway; unset: polling alone.
    redis_url: str | None = None
    alias_channel: str = "mlops:alias-moves"
    instance_id: str | None = Field(
        default=None,
        description="This instance's name, sent to the gateway (X-Inference-Instance) and in "
        "the names of the files it writes; default <hostname>:<port>",
    )
    # The prediction log (prediction_log.py) and the feedback beside it: Parquet files in S3.
    # The drift monitor reads it. Its cost: -7.7% of one-row throughput at 8 connections, about
    # -13% at 64 (docs/benchmarks.md, "Prediction log").
    prediction_log_enabled: bool = True
    prediction_log_bucket: str = Field(
        default="data",
        min_length=3,
        description="Bucket of s3://<bucket>/predictions/... and s3://<bucket>/feedback/...",
    )
    prediction_log_flush_rows: int = Field(
        default=10_000, ge=1, description="A file is written once this many rows wait"
    )
    prediction_log_flush_interval_s: float = Field(
        default=10.0, gt=0, description="...or this long after the last write, whatever waits"
    )
    prediction_log_max_buffered_rows: int = Field(
        default=100_000,
        ge=1,
        description="Rows held in memory, the file being written included; records past it "
        "are dropped (counted), never the request. About 1 KB per one-row request",
    )
    prediction_log_write_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries of one file's upload before its rows drop"
    )
    prediction_log_retry_base_s: float = Field(
        default=1.0, gt=0, description="Wait before the second try, doubling after"
    )
    feedback_max_items: int = Field(
        default=10_000, ge=1, description="Labels in one POST /v1/feedback"
    )

    @property
    def instance(self) -> str:
        """``instance_id``, or ``<hostname>:<port>``."""
        return self.instance_id or f"{socket.gethostname()}:{self.port}"

    @property
    def instance_slug(self) -> str:
        """``instance`` as a piece of an object key: ``host-8800``."""
        return _UNSAFE_KEY_CHARS.sub("-", self.instance)

    @field_validator("trusted_signing_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _signing_keys(self) -> Self:
        if self.require_signed_models and not self.trusted_signing_keys:
            raise ValueError(
                "INFERENCE_TRUSTED_SIGNING_KEYS is empty: inference serves only models signed "
                "by the platform, so it needs the signing key's public half (`mlops env` prints "
                "it for the local stack)"
            )
        if self.trusted_signing_keys:
            ManifestVerifier(self.trusted_signing_keys)  # a malformed key fails at start-up
        return self

    def manifest_verifier(self) -> ManifestVerifier | None:
        if not self.require_signed_models:
            return None
        return ManifestVerifier(self.trusted_signing_keys)

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: Path) -> Path:
        # Resolved once here so a later chdir (or a relative env value) cannot move the cache.
        return value.expanduser().absolute()
