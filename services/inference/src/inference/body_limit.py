"""A cap on request body size, enforced while the body arrives rather than after it is buffered."""

from __future__ import annotations

from starlette.requests import Request

from inference.errors import PayloadTooLarge


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or a 413 naming ``body`` once it is known to exceed ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before any byte is read, a chunked
    body as soon as it passes the limit. (A route-level read rather than a middleware: an extra
    ASGI layer cost every request a few microseconds, and only the scoring routes take bodies.)
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, f"Content-Length is {declared}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes, f"more than {max_bytes} bytes arrived")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than INFERENCE_MAX_BODY_BYTES ({limit} bytes; {what}); "
        "split the batch",
        field="body",
    )
