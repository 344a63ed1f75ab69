"""Request and response bodies."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from mlops_common.auth import (
    MODELS_PATTERN,
    NAME_PATTERN,
    SCOPES,
    check_models,
    check_name,
    check_scopes,
    parse_duration,
)
from mlops_common.names import alias_error
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

# MLflow stores versions in a 32-bit integer column.
MAX_VERSION = 2_147_483_647
# Free text: tabs and line breaks, but no NUL (PostgreSQL refuses it) nor other control characters.
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
DURATION = r"^[0-9]{1,5}[mhdw]$"


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
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT)

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
    actor: str = Field(description="name of the token that moved the alias")
    on_behalf_of: str | None = Field(
        default=None, description="the client's X-Actor note, if any (not authenticated)"
    )
    audit_id: int | None


class AuditEntry(BaseModel):
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    on_behalf_of: str | None = None
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


class CreateTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN.pattern,
        description="Unique name, shown in audits",
    )
    scopes: list[str] = Field(
        min_length=1,
        max_length=16,
        description="Scopes the token holds",
        json_schema_extra={"items": {"type": "string", "enum": list(SCOPES)}},
    )
    models: str = Field(
        default="*",
        max_length=256,
        pattern=MODELS_PATTERN.pattern,
        description="Model-name glob, e.g. churn*",
    )
    expires_in: str | None = Field(
        default=None,
        max_length=16,
        pattern=DURATION,
        description="Lifetime such as 30d, 12h, 90m or 2w",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        return list(check_scopes(value))

    @field_validator("models")
    @classmethod
    def _models(cls, value: str) -> str:
        return check_models(value)

    @field_validator("expires_in")
    @classmethod
    def _expires_in(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class TokenView(BaseModel):
    name: str
    scopes: list[str]
    models: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool


class CreatedToken(TokenView):
    token: str = Field(description="The secret: shown this once, stored only as a hash")


class TokenList(BaseModel):
    tokens: list[TokenView]


class IntrospectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(max_length=256)


class Introspection(BaseModel):
    """RFC 7662's shape: ``active`` false says nothing more about an invalid token."""

    active: bool
    name: str | None = None
    scopes: list[str] = Field(default_factory=list)
    models: str | None = None
    expires_at: datetime | None = None


# -- lineage -----------------------------------------------------------------------------------

SignatureStatus = Literal["verified", "unverified", "invalid", "missing"]


class LineageDataset(BaseModel):
    """The training data as the training run recorded it (run params ``dataset_*``)."""

    source: str | None = Field(
        description="s3:// URI of the data, or sklearn:<name> for a built-in data set"
    )
    builtin: bool = Field(description="true for a data set shipped with a library (no URI)")
    digest: str | None = Field(description="digest of the data the model was trained on")
    rows: int | None = Field(description="rows read (before the train/test split)")
    etl_manifest: str | None = Field(
        description="s3:// URI of the manifest.json of the ETL run that produced the data (run "
        "tag mlops.etl_manifest); null when the data did not come from the ETL"
    )


class LineageEtl(BaseModel):
    """The Airflow DAG run the training job came from (run tags ``mlops.dag_id`` and
    ``mlops.dag_run_id``)."""

    dag_id: str | None
    dag_run_id: str | None


class LineageTrainingRun(BaseModel):
    run_id: str
    experiment_id: str | None
    run_name: str | None
    status: str | None = Field(description="MLflow run status, e.g. FINISHED")
    params: dict[str, str]
    metrics: dict[str, float | None] = Field(description="latest value of each run metric")
    started_at: datetime | None
    ended_at: datetime | None
    code_version: str | None = Field(
        description="trainer package version (run tag mlops.trainer_version)"
    )
    image: str | None = Field(description="container image of the trainer (run tag mlops.image)")
    job_id: str | None = Field(description="trainer job id (run tag trainer.job_id)")


class SignatureCheck(BaseModel):
    """The version's signed manifest (``mlops-signature.json``) checked by the gateway.

    ``verified``: a trusted key (``GATEWAY_TRUSTED_SIGNING_KEYS``) signed it for this model, and
    its digest is the version's ``mlops.manifest_sha256`` tag. ``unverified``: the file exists
    but the gateway has no keys to check it with. ``invalid``: it does not verify (``reason``
    says why). ``missing``: the version has no signature file. The files themselves are checked
    against the manifest by inference when it loads them, not here.
    """

    status: SignatureStatus
    reason: str | None = Field(default=None, description="why the signature is invalid")
    manifest_sha256: str | None = Field(description="the version's mlops.manifest_sha256 tag")
    signed_by: str | None = Field(description="the version's mlops.signed_by tag (a key id)")
    signed_at: str | None = Field(
        default=None, description="when the manifest was signed (verified signatures only)"
    )


class LineageVersion(BaseModel):
    name: str
    version: int
    status: str | None
    created_at: datetime | None
    artifact_uri: str = Field(description="s3://bucket/key of the model version's artifacts")
    run_id: str | None
    source: str | None
    job_id: str | None = Field(description="trainer job that registered it (tag mlops.job_id)")
    signature: SignatureCheck


class ServedBy(BaseModel):
    instance: str = Field(description="host:port the inference instance reported")
    alias: str = Field(description="alias the instance resolves")
    last_seen: datetime
    reported_by: str = Field(description="name of the token the report came with")


class Lineage(BaseModel):
    """Where a model version comes from and where it went: data, DAG run, training run,
    registered version, alias moves and the inference instances serving it."""

    dataset: LineageDataset | None = Field(
        description="null when the version has no readable training run or the run recorded "
        "no dataset"
    )
    etl: LineageEtl | None = Field(description="null when the job did not come from a DAG run")
    training_run: LineageTrainingRun | None = Field(
        description="null when the version has no run or the run was deleted"
    )
    version: LineageVersion
    alias_moves: list[AuditEntry] = Field(
        description="audited moves of any alias to or from this version, oldest first"
    )
    alias_moves_truncated: bool = Field(
        description="true when there were more moves than the response holds"
    )
    aliases_now: list[str] = Field(description="aliases naming this version now")
    served_by: list[ServedBy] = Field(
        description="inference instances that reported serving this version within "
        "served_by_window_s seconds"
    )
    served_by_window_s: float


# ---- rollouts (model_gateway.rollouts) -------------------------------------------------------
MAX_VARIANTS = 10
# An HTTP header name (RFC 9110 token), short enough to log.
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class RolloutVariant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(max_length=64, description="a registry alias of the model")
    weight: StrictInt = Field(ge=0, le=100, description="share of requests, in percent")

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if problem := alias_error(value, for_write=False):
            raise ValueError(problem)
        return value


class RolloutGuard(BaseModel):
    """Limits the variants other than ``champion`` must keep once they have ``min_requests``
    requests; inference aborts the rollout when one breaks them."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(default=0.01, ge=0, le=1, allow_inf_nan=False)
    max_p99_ms: float | None = Field(default=None, gt=0, le=600_000, allow_inf_nan=False)
    min_requests: StrictInt = Field(default=500, ge=1, le=1_000_000_000)


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variants: list[RolloutVariant] = Field(
        min_length=1,
        max_length=MAX_VARIANTS,
        description="aliases and their integer weights, summing to 100",
    )
    mirror: str | None = Field(
        default=None,
        max_length=64,
        description="an alias that gets a copy of every request; its answers are only logged",
    )
    sticky_header: str | None = Field(
        default=None,
        pattern=HEADER_NAME,
        description="requests with the same value of this header always land on the same variant",
    )
    guard: RolloutGuard | None = None
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT)

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        if value is not None and (problem := alias_error(value, for_write=False)):
            raise ValueError(problem)
        return value

    @field_validator("variants")
    @classmethod
    def _split(cls, value: list[RolloutVariant]) -> list[RolloutVariant]:
        aliases = [v.alias for v in value]
        if len(set(aliases)) != len(aliases):
            raise ValueError("each alias may appear once")
        total = sum(v.weight for v in value)
        if total != 100:
            raise ValueError(f"the weights sum to {total}, not 100")
        return value

    @model_validator(mode="after")
    def _mirror_apart(self) -> RolloutRequest:
        if self.mirror is not None and self.mirror in {v.alias for v in self.variants}:
            raise ValueError(f"mirror: {self.mirror!r} is a variant already; mirror another alias")
        return self


class RolloutTarget(BaseModel):
    alias: str
    weight: int
    version: int | None = Field(description="what the alias names now (null: nothing)")


class RolloutView(BaseModel):
    name: str
    active: bool = Field(description="false: every request goes to champion")
    revision: int = Field(description="grows with every change of this model's rollout")
    variants: list[RolloutTarget]
    mirror: RolloutTarget | None = None
    sticky_header: str | None = None
    guard: RolloutGuard | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    actor: str | None = None
    on_behalf_of: str | None = None
    reason: str | None = None


class RolloutPromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str | None = Field(
        default=None,
        max_length=64,
        description="the winning variant; default: the heaviest variant other than champion",
    )
    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT)


class RolloutAbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000, pattern=TEXT)
    figures: dict[str, float] | None = Field(
        default=None,
        max_length=20,
        description="what tripped a guard (error rate, p99, requests), recorded in the history; "
        "names of letters, digits, '_', '.', '-'",
    )

    @field_validator("figures")
    @classmethod
    def _figures(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, number in (value or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                raise ValueError(f"figure name {name[:70]!r} is not letters, digits, '_', '.', '-'")
            if not math.isfinite(number):
                raise ValueError(f"figure {name!r} is not a finite number")
        return value


class RolloutPromoted(BaseModel):
    move: AliasMove
    rollout: RolloutView


class RolloutHistoryEntry(BaseModel):
    id: int
    action: Literal["started", "changed", "ended", "promoted", "aborted"]
    revision: int
    spec: dict[str, Any] | None
    actor: str
    on_behalf_of: str | None
    reason: str | None
    figures: dict[str, float] | None
    at: datetime


class RolloutHistory(BaseModel):
    name: str
    entries: list[RolloutHistoryEntry]
