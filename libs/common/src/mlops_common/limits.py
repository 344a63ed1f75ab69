"""A cap on request body size, as ASGI middleware (trainer and gateway; inference reads its
bodies in the two routes that take them, where the cap costs less)."""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlops_common.errors import PayloadTooLarge

_DIGITS = re.compile(r"[0-9]{1,20}")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413 naming ``body``.

    A declared ``Content-Length`` over the limit is refused before any byte is read (the server
    holds a body to its declared length); a body without one (chunked) is read up to the limit
    and then handed on, or refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, setting: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and _DIGITS.fullmatch(declared.strip()):
            if int(declared) > self.max_bytes:
                await self._refuse(f"Content-Length is {int(declared)}")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(f"more than {self.max_bytes} bytes arrived")(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _refuse(self, what: str) -> JSONResponse:
        error = PayloadTooLarge(
            f"the request body is larger than {self.setting} ({self.max_bytes} bytes; {what})",
            field="body",
        )
        return JSONResponse(error.to_dict(), status_code=error.status_code)
