"""Events from the gateway (Redis pub/sub): alias moves and rollout changes, acted on within a
second instead of at the next poll.

Pub/sub is best effort (a message published while we are disconnected is gone), so polling
stays on as the fallback; an event only makes the next poll happen now.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 30.0


async def follow_model_events(
    redis_url: str,
    channel: str,
    model_name: str,
    on_event: Callable[[dict[str, Any] | None], None],
) -> None:
    """Call ``on_event`` with each event about ``model_name`` (``{"alias", ...}`` for a move,
    ``{"type": "rollout", ...}``), and with None whenever events may have been missed (at every
    (re)connection): then anything may have changed. Reconnects until cancelled."""
    import redis.asyncio as redis

    delay = 1.0
    while True:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                log.info("following alias moves and rollouts on %s", channel)
                delay = 1.0
                on_event(None)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    event = _event(message.get("data"), model_name)
                    if event is not None:
                        on_event(event)
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


def _event(data: object, model_name: str) -> dict[str, Any] | None:
    try:
        event = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("name") == model_name:
        return event
    return None
