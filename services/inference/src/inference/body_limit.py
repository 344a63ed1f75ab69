"""A cap on request body size, enforced while the body arrives rather than after it is buffered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.errors import PayloadTooLarge


class BodyLimit:
    """Pure ASGI middleware: a body larger than ``max_bytes`` is refused with a 413.

    A declared ``Content-Length`` over the limit is refused before any byte is read; a chunked
    body as soon as it passes the limit. The error is raised from ``receive`` inside the route, so
    the service's error handlers render it like every other error (a string on ``/v2``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise _too_large(limit, f"Content-Length is {declared}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit, f"more than {limit} bytes arrived")
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than INFERENCE_MAX_BODY_BYTES ({limit} bytes; {what}); "
        "split the batch",
        field="body",
    )
