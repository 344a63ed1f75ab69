"""Request ids: every scoring answer names its request, so the prediction can be found again.

The id is the client's ``X-Request-Id`` when it is a short safe token, else one made here. It
goes back in the ``X-Request-Id`` header (errors included) and in the body, is the
``request_id`` of the prediction log's rows, and is what ``POST /v1/feedback`` joins labels on.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

HEADER = "X-Request-Id"
PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
# Anything else a client sends (long, or with characters that could forge log lines or keys)
# is replaced, not refused: the id is ours to make.
_SAFE = re.compile(PATTERN)
# The scope key the id is kept under, for the error handlers (they see the same scope).
_SCOPE_KEY = "inference.request_id"


class _Ids:
    """A random per-process prefix and a counter: unique across instances and restarts, at a
    fraction of uuid4's cost (no system call per request)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):08x}"


_IDS = _Ids()
# A forked worker must not repeat its parent's ids.
os.register_at_fork(after_in_child=_IDS.reseed)


def new_request_id() -> str:
    return _IDS.new()


def is_safe(value: str) -> bool:
    return _SAFE.fullmatch(value) is not None


def request_id(request: Request) -> str:
    """The id of ``request``: decided once, then kept in its scope."""
    scope = request.scope
    found: str | None = scope.get(_SCOPE_KEY)
    if found is None:
        sent = request.headers.get(HEADER)
        found = sent if sent is not None and is_safe(sent) else _IDS.new()
        scope[_SCOPE_KEY] = found
    return found


def errors_carry_request_id(app: FastAPI) -> None:
    """Add ``X-Request-Id`` to every error answer of ``app``.

    Wraps the exception handlers installed so far, so it costs nothing on a successful request;
    call it after ``install_error_handlers``.
    """
    for key, handler in list(app.exception_handlers.items()):
        app.exception_handlers[key] = _tagged(handler)


def _tagged(handler: Callable[..., Any]) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def tagged(request: Request, exc: Exception) -> Response:
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        response.headers[HEADER] = request_id(request)
        return response

    return tagged
