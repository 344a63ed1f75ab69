"""Alias moves published on Redis pub/sub, so inference can swap models without waiting for its
next poll of the gateway.

Delivery is best effort by design: pub/sub keeps nothing for a subscriber that is away, and the
move is already committed when it is published. Subscribers must still poll the gateway.

Every message is one JSON object on ``GatewaySettings.alias_channel``::

    {"name": "iris", "alias": "champion", "version": 3, "previous_version": 2,
     "moved_at": "2026-11-27T08:00:00.123456+00:00", "actor": "airflow"}

``previous_version`` is null when the alias was not set before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from model_gateway.schemas import AliasMove

log = logging.getLogger(__name__)


class AliasEvents(Protocol):
    """Where committed alias moves are announced."""

    async def publish(self, event: dict[str, Any]) -> None: ...


class NoAliasEvents:
    """Publishing is off (no ``GATEWAY_REDIS_URL``): subscribers rely on polling alone."""

    async def publish(self, event: dict[str, Any]) -> None:
        return None


class RedisAliasEvents:
    """Publishes each event as JSON on one Redis pub/sub channel."""

    def __init__(self, client: Redis, channel: str, timeout_s: float) -> None:
        self.client = client
        self.channel = channel
        self.timeout_s = timeout_s

    @classmethod
    def from_url(cls, url: str, channel: str, timeout_s: float) -> RedisAliasEvents:
        # The client connects lazily, so the gateway starts and moves aliases with Redis down.
        # redis-py's default retries back off for seconds; a move waits on its publish, so one
        # immediate retry (a connection dropped while idle) is all it gets.
        client = Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), retries=1),
            health_check_interval=30,
        )
        return cls(client, channel, timeout_s)

    async def publish(self, event: dict[str, Any]) -> None:
        message = json.dumps(event, separators=(",", ":"))
        async with asyncio.timeout(self.timeout_s):
            receivers = await self.client.publish(self.channel, message)
        log.debug("published %s on %s to %s subscribers", message, self.channel, receivers)

    async def aclose(self) -> None:
        await self.client.aclose()


def alias_event(move: AliasMove) -> dict[str, Any]:
    """The published form of a committed move."""
    return {
        "name": move.name,
        "alias": move.alias,
        "version": move.version,
        "previous_version": move.previous_version,
        "moved_at": move.moved_at.isoformat() if move.moved_at else None,
        "actor": move.actor,
        "on_behalf_of": move.on_behalf_of,
    }
