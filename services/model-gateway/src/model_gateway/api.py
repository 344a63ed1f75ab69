"""HTTP routes. Each one validates transport-level input and delegates to ``GatewayHandler``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response
from mlops_common.auth import NAME_PATTERN, Principal, requires
from mlops_common.errors import ErrorResponse, Unprocessable
from mlops_common.names import (
    MAX_ALIAS_LENGTH,
    MAX_MODEL_NAME_LENGTH,
    MODEL_NAME_PATTERN,
    READABLE_ALIAS_PATTERN,
    SETTABLE_ALIAS_PATTERN,
)
from mlops_common.service import from_state

from model_gateway.handlers import (
    INSTANCE_HEADER,
    INSTANCE_PATTERN,
    MAX_INSTANCE_LENGTH,
    SERVED_VERSION_HEADER,
    SERVED_VERSION_PATTERN,
    GatewayHandler,
    InstanceHeaders,
)
from model_gateway.rollouts import Rollouts
from model_gateway.schemas import (
    MAX_VERSION,
    AliasMove,
    AuditHistory,
    CreatedToken,
    CreateTokenRequest,
    Health,
    Introspection,
    IntrospectRequest,
    Lineage,
    ModelDetail,
    MoveAliasRequest,
    ResolvedAlias,
    RolloutAbortRequest,
    RolloutHistory,
    RolloutPromoted,
    RolloutPromoteRequest,
    RolloutRequest,
    RolloutView,
    TokenList,
    TokenView,
)
from model_gateway.tokens import TokensHandler

MAX_ACTOR_LENGTH = 256


async def get_on_behalf_of(
    x_actor: Annotated[
        str | None,
        Header(
            alias="X-Actor",
            description="Whom the caller acts for: kept beside the token's name, never instead",
        ),
    ] = None,
) -> str | None:
    actor = (x_actor or "").strip()
    if not actor:
        return None
    if len(actor) > MAX_ACTOR_LENGTH or not actor.isprintable():
        raise Unprocessable(
            f"X-Actor must be printable text of at most {MAX_ACTOR_LENGTH} characters",
            field="X-Actor",
        )
    return actor


async def get_instance_headers(
    x_inference_instance: Annotated[
        str | None,
        Header(
            alias=INSTANCE_HEADER,
            description="Sent by inference instances: the host:port of the instance, recorded "
            "with X-Served-Version for the lineage's served_by (a malformed value is not "
            "recorded; the resolve is answered all the same)",
            json_schema_extra={"maxLength": MAX_INSTANCE_LENGTH, "pattern": INSTANCE_PATTERN},
        ),
    ] = None,
    x_served_version: Annotated[
        str | None,
        Header(
            alias=SERVED_VERSION_HEADER,
            description="Sent by inference instances: the version the instance serves now, "
            "empty before it has loaded one",
            json_schema_extra={"maxLength": 10, "pattern": SERVED_VERSION_PATTERN},
        ),
    ] = None,
) -> InstanceHeaders | None:
    instance = (x_inference_instance or "").strip()
    if not instance:
        return None
    served = (x_served_version or "").strip()
    return InstanceHeaders(instance=instance, served_version=served or None)


HandlerDep = Annotated[GatewayHandler, Depends(from_state("handler"))]
TokensDep = Annotated[TokensHandler, Depends(from_state("tokens"))]
RolloutsDep = Annotated[Rollouts, Depends(from_state("rollouts"))]
OnBehalfOf = Annotated[str | None, Depends(get_on_behalf_of)]
InstanceReport = Annotated[InstanceHeaders | None, Depends(get_instance_headers)]
ModelReader = Annotated[Principal, Depends(requires("models:read", model_param="name"))]
ModelPromoter = Annotated[Principal, Depends(requires("models:promote", model_param="name"))]
# Aborting a rollout only sends every request back to champion: inference's own token may do it
# (rollouts:abort) when its guard trips, without models:promote.
RolloutAborter = Annotated[
    Principal,
    Depends(requires(("models:promote", "rollouts:abort"), model_param="name")),
]
Admin = Annotated[Principal, Depends(requires("admin"))]
Introspector = Annotated[Principal, Depends(requires("tokens:introspect"))]
# The handler checks names and aliases (with messages saying which rule failed); the schema only
# documents the same rules.
ModelName = Annotated[
    str,
    Path(
        description="Registered model name in MLflow: no ':', '/' or control characters",
        json_schema_extra={"maxLength": MAX_MODEL_NAME_LENGTH, "pattern": MODEL_NAME_PATTERN},
    ),
]
AliasName = Annotated[
    str,
    Path(
        description="Alias such as champion or challenger ('latest' names the newest version)",
        json_schema_extra={"maxLength": MAX_ALIAS_LENGTH, "pattern": READABLE_ALIAS_PATTERN},
    ),
]
SettableAlias = Annotated[
    str,
    Path(
        description="Alias such as champion or challenger; not 'latest' nor v<N>, which MLflow "
        "reserves",
        json_schema_extra={"maxLength": MAX_ALIAS_LENGTH, "pattern": SETTABLE_ALIAS_PATTERN},
    ),
]
TokenName = Annotated[
    str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN.pattern, description="Token name")
]
VersionNumber = Annotated[
    int, Path(ge=1, le=MAX_VERSION, description="Version number of the registered model")
]
Limit = Annotated[int, Query(ge=1, le=500, description="Most records to return")]

_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 422, 502, 503)
}
_auth_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 422)
}

router = APIRouter()


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "MLflow or the database is failing"}},
)
async def health(handler: HandlerDep, response: Response) -> Health:
    result = await handler.health()
    if result.status != "ok":
        response.status_code = 503
    return result


@router.get("/v1/models/{name}", responses=_errors)
async def describe_model(name: ModelName, handler: HandlerDep, _: ModelReader) -> ModelDetail:
    """The model's aliases and every version with its run metrics and params, newest first."""
    return await handler.describe_model(name)


@router.get("/v1/models/{name}/aliases/{alias}", responses=_errors)
async def resolve_alias(
    name: ModelName,
    alias: AliasName,
    handler: HandlerDep,
    principal: ModelReader,
    report: InstanceReport,
) -> ResolvedAlias:
    """Resolve ``name@alias`` to the model version's s3:// artifacts, flavor and signature.

    Inference instances say which version they serve in ``X-Inference-Instance`` and
    ``X-Served-Version``; the gateway records it in the background for the lineage's
    ``served_by``.
    """
    return await handler.resolve(name, alias, report=report, reporter=principal.name)


@router.put(
    "/v1/models/{name}/aliases/{alias}",
    responses={**_errors, 409: _errors[404], 413: _errors[404]},
)
async def move_alias(
    name: ModelName,
    alias: SettableAlias,
    body: Annotated[MoveAliasRequest, Body()],
    handler: HandlerDep,
    principal: ModelPromoter,
    on_behalf_of: OnBehalfOf,
) -> AliasMove:
    """Point the alias at a version; every change is recorded in the audit table with the
    token's name as the actor."""
    return await handler.move_alias(
        name,
        alias,
        body.version,
        reason=body.reason,
        actor=principal.name,
        on_behalf_of=on_behalf_of,
    )


@router.get("/v1/models/{name}/aliases/{alias}/history", responses=_errors)
async def alias_history(
    name: ModelName, alias: AliasName, handler: HandlerDep, _: ModelReader, limit: Limit = 50
) -> AuditHistory:
    """Moves of one alias, newest first."""
    return await handler.history(name, alias, limit)


@router.get("/v1/models/{name}/audit", responses=_errors)
async def model_audit(
    name: ModelName, handler: HandlerDep, _: ModelReader, limit: Limit = 50
) -> AuditHistory:
    """Moves of every alias of the model, newest first."""
    return await handler.history(name, None, limit)


@router.get("/v1/models/{name}/versions/{version}/lineage", responses=_errors)
async def version_lineage(
    name: ModelName, version: VersionNumber, handler: HandlerDep, _: ModelReader
) -> Lineage:
    """Where a version comes from and where it went, in one call: the data (and the ETL
    manifest), the DAG run, the training run, the registered version with its signature
    checked, every alias move to or from it, the aliases naming it now and the inference
    instances serving it."""
    return await handler.lineage(name, version)


@router.get("/v1/models/{name}/rollout", responses=_errors)
async def get_rollout(name: ModelName, rollouts: RolloutsDep, _: ModelReader) -> RolloutView:
    """The model's traffic split (every variant with the version its alias names now); without
    a rollout, ``active`` is false and every request goes to champion."""
    return await rollouts.get(name)


@router.put("/v1/models/{name}/rollout", responses={**_errors, 413: _errors[404]})
async def set_rollout(
    name: ModelName,
    body: Annotated[RolloutRequest, Body()],
    rollouts: RolloutsDep,
    principal: ModelPromoter,
    on_behalf_of: OnBehalfOf,
) -> RolloutView:
    """Start or change the rollout: integer weights summing to 100 over aliases that name a
    version now (else 422), an optional mirror and sticky header and guard. Audited and
    published like alias moves."""
    return await rollouts.set(name, body, actor=principal.name, on_behalf_of=on_behalf_of)


@router.delete("/v1/models/{name}/rollout", responses=_errors)
async def end_rollout(
    name: ModelName, rollouts: RolloutsDep, principal: ModelPromoter, on_behalf_of: OnBehalfOf
) -> RolloutView:
    """End the rollout: every request to champion (a model without one is left as it is)."""
    return await rollouts.end(name, actor=principal.name, on_behalf_of=on_behalf_of)


@router.post("/v1/models/{name}/rollout/promote", responses={**_errors, 409: _errors[404]})
async def promote_rollout(
    name: ModelName,
    body: Annotated[RolloutPromoteRequest, Body()],
    rollouts: RolloutsDep,
    principal: ModelPromoter,
    on_behalf_of: OnBehalfOf,
) -> RolloutPromoted:
    """Move champion to the winning variant's version (``alias``, default the heaviest variant
    other than champion), then end the rollout; 404 without one."""
    return await rollouts.promote(name, body, actor=principal.name, on_behalf_of=on_behalf_of)


@router.post("/v1/models/{name}/rollout/abort", responses=_errors)
async def abort_rollout(
    name: ModelName,
    body: Annotated[RolloutAbortRequest, Body()],
    rollouts: RolloutsDep,
    principal: RolloutAborter,
    on_behalf_of: OnBehalfOf,
) -> RolloutView:
    """End the rollout at once, recording the reason and the figures (a tripped guard); 404
    without one. Scope ``models:promote`` or ``rollouts:abort`` for the model."""
    return await rollouts.abort(name, body, actor=principal.name, on_behalf_of=on_behalf_of)


@router.get("/v1/models/{name}/rollout/history", responses=_errors)
async def rollout_history(
    name: ModelName, rollouts: RolloutsDep, _: ModelReader, limit: Limit = 50
) -> RolloutHistory:
    """Every start, change, end, promotion and abort of the model's rollouts, newest first."""
    return await rollouts.history(name, limit)


@router.post(
    "/v1/tokens", status_code=201, responses={**_auth_errors, 409: _errors[404], 413: _errors[404]}
)
async def create_token(body: CreateTokenRequest, tokens: TokensDep, admin: Admin) -> CreatedToken:
    """Create a token; its secret is in this response only (the platform keeps a hash)."""
    return await tokens.create(body, admin)


@router.get("/v1/tokens", responses=_auth_errors)
async def list_tokens(tokens: TokensDep, admin: Admin) -> TokenList:
    """Tokens with their scopes, pattern, expiry and last use; never a secret.

    An admin token limited to some models sees only the tokens within that limit.
    """
    return await tokens.list(admin)


@router.delete("/v1/tokens/{token_name}", responses={**_auth_errors, 404: _errors[404]})
async def revoke_token(token_name: TokenName, tokens: TokensDep, admin: Admin) -> TokenView:
    """Revoke a token: every service refuses it within a few seconds."""
    return await tokens.revoke(token_name, admin)


@router.post("/v1/tokens/introspect", responses={**_auth_errors, 413: _errors[404]})
async def introspect_token(
    body: IntrospectRequest, tokens: TokensDep, _: Introspector
) -> Introspection:
    """Whether a token is active and what it may do (for services without database access)."""
    return await tokens.introspect(body.token)
