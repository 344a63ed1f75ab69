"""Alias-move events from the gateway (Redis pub/sub): swap within a second instead of a poll.

Pub/sub is best effort (a message published while we are disconnected is gone), so polling
stays on as the fallback; an event only makes the next poll happen now.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 30.0


async def follow_alias_moves(
    redis_url: str, channel: str, model_name: str, alias: str, on_move: Callable[[], None]
) -> None:
    """Call ``on_move`` for each event about ``model_name@alias``; reconnects until cancelled."""
    import redis.asyncio as redis

    delay = 1.0
    while True:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                log.info("following alias moves on %s", channel)
                delay = 1.0
                # A move may have happened while we were not subscribed.
                on_move()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    if _concerns(message.get("data"), model_name, alias):
                        on_move()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "alias events unavailable (%s); polling only, retrying in %.0fs", exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            await client.aclose()


def _concerns(data: object, model_name: str, alias: str) -> bool:
    try:
        event = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        return False
    return (
        isinstance(event, dict) and event.get("name") == model_name and event.get("alias") == alias
    )
