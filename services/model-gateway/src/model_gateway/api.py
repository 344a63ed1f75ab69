"""HTTP routes. Each one validates transport-level input and delegates to ``GatewayHandler``."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from mlops_common.errors import Unprocessable

from model_gateway.handlers import GatewayHandler
from model_gateway.schemas import (
    AliasMove,
    AuditHistory,
    ErrorResponse,
    Health,
    ModelDetail,
    MoveAliasRequest,
    ResolvedAlias,
)

MAX_ACTOR_LENGTH = 256


# Dependencies are async: FastAPI runs sync ones in its thread pool, a thread hop per request.
async def get_handler(request: Request) -> GatewayHandler:
    return cast(GatewayHandler, request.app.state.handler)


async def get_actor(
    request: Request,
    x_actor: Annotated[
        str | None, Header(alias="X-Actor", description="Who moves the alias (audited)")
    ] = None,
) -> str:
    actor = (x_actor or "").strip()
    if not actor:
        host = request.client.host if request.client else "unknown"
        return f"client:{host}"
    if len(actor) > MAX_ACTOR_LENGTH or not actor.isprintable():
        raise Unprocessable(
            f"X-Actor must be printable text of at most {MAX_ACTOR_LENGTH} characters",
            field="X-Actor",
        )
    return actor


HandlerDep = Annotated[GatewayHandler, Depends(get_handler)]
ActorDep = Annotated[str, Depends(get_actor)]
ModelName = Annotated[str, Path(description="Registered model name in MLflow")]
AliasName = Annotated[str, Path(description="Alias such as champion or challenger")]
Limit = Annotated[int, Query(ge=1, le=500, description="Most records to return")]

_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 422, 502)
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
async def describe_model(name: ModelName, handler: HandlerDep) -> ModelDetail:
    """The model's aliases and every version with its run metrics and params, newest first."""
    return await handler.describe_model(name)


@router.get("/v1/models/{name}/aliases/{alias}", responses=_errors)
async def resolve_alias(name: ModelName, alias: AliasName, handler: HandlerDep) -> ResolvedAlias:
    """Resolve ``name@alias`` to the model version's s3:// artifacts, flavor and signature."""
    return await handler.resolve(name, alias)


@router.put("/v1/models/{name}/aliases/{alias}", responses={**_errors, 409: _errors[404]})
async def move_alias(
    name: ModelName,
    alias: AliasName,
    body: Annotated[MoveAliasRequest, Body()],
    handler: HandlerDep,
    actor: ActorDep,
) -> AliasMove:
    """Point the alias at a version; every change is recorded in the audit table."""
    return await handler.move_alias(name, alias, body.version, reason=body.reason, actor=actor)


@router.get("/v1/models/{name}/aliases/{alias}/history", responses=_errors)
async def alias_history(
    name: ModelName, alias: AliasName, handler: HandlerDep, limit: Limit = 50
) -> AuditHistory:
    """Moves of one alias, newest first."""
    return await handler.history(name, alias, limit)


@router.get("/v1/models/{name}/audit", responses=_errors)
async def model_audit(name: ModelName, handler: HandlerDep, limit: Limit = 50) -> AuditHistory:
    """Moves of every alias of the model, newest first."""
    return await handler.history(name, None, limit)
