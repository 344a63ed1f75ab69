"""HTTP client between services: explicit timeouts, and retries with backoff for idempotent calls."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class RetryingTransport(httpx.AsyncBaseTransport):
    """Retries connection errors and 502/503/504 on idempotent methods, with exponential backoff."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, retries: int = 3, backoff_s: float = 0.2
    ) -> None:
        self.inner = inner
        self.retries = retries
        self.backoff_s = backoff_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            retryable = request.method in IDEMPOTENT and attempt < self.retries
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                if not retryable:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES or not retryable:
                    return response
                await response.aclose()
            attempt += 1
            delay = self.backoff_s * 2 ** (attempt - 1)
            log.debug("retrying %s %s in %.2fs", request.method, request.url, delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_async_client(
    base_url: str,
    *,
    timeout_s: float = 10.0,
    retries: int = 3,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: httpx.Auth | None = None,
    bearer_token: str | None = None,
) -> httpx.AsyncClient:
    """``bearer_token`` is sent as ``Authorization: Bearer`` on every request (service tokens)."""
    inner = transport or httpx.AsyncHTTPTransport()
    all_headers = dict(headers or {})
    if bearer_token:
        all_headers["Authorization"] = f"Bearer {bearer_token}"
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        transport=RetryingTransport(inner, retries=retries),
        headers=all_headers,
        auth=auth,
    )


def make_sync_client(
    base_url: str, *, timeout_s: float = 10.0, retries: int = 3, **kwargs: Any
) -> httpx.Client:
    """Blocking client (Celery workers, CLIs). Retries connection failures only."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        transport=httpx.HTTPTransport(retries=retries),
        **kwargs,
    )


def wait_until(check: Any, timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``check()`` until it returns truthy or time runs out (readiness, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:  # noqa: S110 - not ready yet is the expected case
            pass
        time.sleep(interval_s)
    return False
