"""One error model for every service: a domain error carries its status code, one handler renders.

Every error body is ``{"error": {"code": ..., "message": ..., "field": ...}}``; request validation
errors list each offending field. A database that cannot be reached is a 503 with ``Retry-After``
(the request was fine: retry it later). Other unexpected exceptions become a 500 without a stack
trace in the body (the trace goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """The shape of every error body, for the services' OpenAPI (what ``to_dict`` renders)."""

    error: ErrorBody


class PlatformError(Exception):
    """Base class of every error a service raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def headers(self) -> dict[str, str] | None:
        """Response headers this error needs (``Retry-After``, ``WWW-Authenticate``)."""
        return {"Retry-After": "1"} if self.status_code == 503 else None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(PlatformError):
    status_code = 400
    code = "bad_request"


class Unauthorized(PlatformError):
    """No credentials, or credentials that are not (or no longer) valid."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message, field="Authorization")
        self.invalid_token = invalid_token

    def headers(self) -> dict[str, str]:
        # RFC 6750: say which scheme to use; name the error when a token was sent and refused.
        if self.invalid_token:
            return {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(PlatformError):
    """Valid credentials without the scope (or the model) the request needs."""

    status_code = 403
    code = "forbidden"


class NotFound(PlatformError):
    status_code = 404
    code = "not_found"


class Conflict(PlatformError):
    status_code = 409
    code = "conflict"


class Unprocessable(PlatformError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(PlatformError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(PlatformError):
    """429 with ``Retry-After``: the request is fine, the service cannot take it now."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServiceUnavailable(PlatformError):
    status_code = 503
    code = "unavailable"


class UpstreamError(PlatformError):
    """A component this service calls answered wrongly (a malformed answer, refused credentials)."""

    status_code = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """A component this service calls is unreachable, timed out or failing (5xx, 429): a 503
    with ``Retry-After``, since retrying later is what the client should do."""

    status_code = 503
    code = "upstream_unavailable"


DATABASE_UNAVAILABLE = "the database is unavailable; retry later"


def is_database_outage(exc: BaseException) -> bool:
    """Whether a database error says the database cannot be used now, not that the statement is
    wrong: the server is down, restarting or unreachable, the connection broke, no pooled
    connection came free in time, or it gave up on the transaction (deadlock, too many
    connections). The same request can succeed later; any other database error is a bug.
    """
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) if parts else "body"


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        field = _location(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "json_invalid":
            field, msg = "body", f"malformed JSON: {err.get('ctx', {}).get('error', msg)}"
        out.append({"field": field, "message": msg})
    return out


def install_error_handlers(app: FastAPI, *, string_error_prefixes: tuple[str, ...] = ()) -> None:
    """Render every error as ``{"error": {...}}``.

    Under ``string_error_prefixes`` (protocols whose clients parse ``{"error": "<message>"}``,
    such as the Open Inference Protocol's ``/v2``) the same error is rendered as one string that
    still names the field.
    """

    def render(
        request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> JSONResponse:
        if string_error_prefixes and request.url.path.startswith(string_error_prefixes):
            field = body.get("field")
            text = f"{field}: {body['message']}" if field else str(body["message"])
            return JSONResponse({"error": text}, status_code=status, headers=headers)
        return JSONResponse({"error": body}, status_code=status, headers=headers)

    @app.exception_handler(PlatformError)
    async def _platform_error(request: Request, exc: PlatformError) -> JSONResponse:
        return render(request, exc.status_code, exc.to_dict()["error"], exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        body = {"code": "invalid_input", "message": message, "field": first["field"]}
        return render(request, 422, {**body, "details": {"errors": errors}})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        body = {"code": code, "message": str(exc.detail)}
        return render(request, exc.status_code, body, getattr(exc, "headers", None))

    async def _database_outage(request: Request, exc: Exception) -> JSONResponse:
        if not is_database_outage(exc):
            raise exc  # a bug: the catch-all below logs it and answers 500
        # One line, no trace: during an outage every request fails the same way.
        log.warning(
            "database unavailable on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        error = ServiceUnavailable(DATABASE_UNAVAILABLE)
        return render(request, error.status_code, error.to_dict()["error"], error.headers())

    # DBAPIError covers OperationalError and InterfaceError; the pool's timeout is no DBAPIError.
    app.add_exception_handler(DBAPIError, _database_outage)
    app.add_exception_handler(PoolTimeout, _database_outage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"code": "internal_error", "message": "internal error; see service log"}
        return render(request, 500, body)
