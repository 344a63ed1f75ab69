"""Rollouts: a model's traffic split between registry aliases, kept as data in the gateway.

A rollout names variants (aliases with integer weights summing to 100), optionally a mirror
alias (a copy of every request, answers only logged), a sticky header (the same value always
lands on the same variant) and a guard (limits a variant other than ``champion`` must keep).
Inference reads it (``GET /v1/models/{name}/rollout``) and follows it; every change is audited
(``rollout_audit``) and published on the alias channel as ``{"name", "type": "rollout",
"action", "revision"}``, with polling as the fallback, like alias moves. Without a rollout every
request goes to ``champion``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from mlops_common.errors import NotFound, Unprocessable

from model_gateway import db
from model_gateway.handlers import GatewayHandler, registered_aliases, validate_model_name
from model_gateway.schemas import (
    RolloutAbortRequest,
    RolloutGuard,
    RolloutHistory,
    RolloutHistoryEntry,
    RolloutPromoted,
    RolloutPromoteRequest,
    RolloutRequest,
    RolloutTarget,
    RolloutView,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"


class Rollouts:
    def __init__(self, gateway: GatewayHandler) -> None:
        self.gateway = gateway
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, name: str) -> RolloutView:
        validate_model_name(name)
        aliases = await self._aliases(name)
        record = await self.gateway.db_call(db.get_rollout, self.gateway.engine, name)
        return _view(name, record, aliases, await self._last_revision(name, record))

    async def set(
        self, name: str, request: RolloutRequest, *, actor: str, on_behalf_of: str | None
    ) -> RolloutView:
        """Start or change the rollout; every alias it names must name a version now."""
        validate_model_name(name)
        aliases = await self._aliases(name)
        for i, variant in enumerate(request.variants):
            _require(aliases, name, variant.alias, f"variants[{i}].alias")
        if request.mirror is not None:
            _require(aliases, name, request.mirror, "mirror")
        spec = request.model_dump(mode="json", exclude={"reason"})
        change = db.RolloutChange(actor, on_behalf_of, request.reason, datetime.now(UTC))
        async with self._lock(name):
            record = await self.gateway.db_call(
                db.save_rollout, self.gateway.engine, name, spec, change
            )
            log.info(
                "rollout of %s, revision %d: %s (actor=%s)", name, record.revision, spec, actor
            )
            await self._announce(name, "changed", record.revision)
        return _view(name, record, aliases, record.revision)

    async def end(
        self,
        name: str,
        *,
        actor: str,
        on_behalf_of: str | None,
        reason: str | None = None,
        action: str = "ended",
        figures: dict[str, float] | None = None,
    ) -> RolloutView:
        """End the rollout (every request to champion); a model without one is left as it is."""
        validate_model_name(name)
        aliases = await self._aliases(name)
        change = db.RolloutChange(actor, on_behalf_of, reason, datetime.now(UTC))
        async with self._lock(name):
            revision = await self.gateway.db_call(
                db.end_rollout, self.gateway.engine, name, action, change, figures
            )
            if revision is not None:
                log.info("rollout of %s %s (actor=%s, reason=%r)", name, action, actor, reason)
                await self._announce(name, action, revision)
        return _view(name, None, aliases, revision or await self._last_revision(name, None))

    async def abort(
        self, name: str, body: RolloutAbortRequest, *, actor: str, on_behalf_of: str | None
    ) -> RolloutView:
        """End the rollout at once, recording why (a tripped guard sends its figures)."""
        await self._active(name)
        return await self.end(
            name,
            actor=actor,
            on_behalf_of=on_behalf_of,
            reason=body.reason,
            action="aborted",
            figures=body.figures,
        )

    async def promote(
        self, name: str, body: RolloutPromoteRequest, *, actor: str, on_behalf_of: str | None
    ) -> RolloutPromoted:
        """Move champion to the winning variant's version, then end the rollout."""
        record = await self._active(name)
        variants = record.spec["variants"]
        if body.alias is not None:
            if body.alias not in {v["alias"] for v in variants}:
                raise Unprocessable(
                    f"{body.alias!r} is not a variant of the rollout of {name!r}", field="alias"
                )
            winner = body.alias
        else:
            others = sorted(
                (v for v in variants if v["alias"] != CHAMPION), key=lambda v: -int(v["weight"])
            )
            if not others or (len(others) > 1 and others[0]["weight"] == others[1]["weight"]):
                raise Unprocessable(
                    "name the winning variant: no single variant other than champion is heaviest",
                    field="alias",
                )
            winner = str(others[0]["alias"])
        aliases = await self._aliases(name)
        version = _require(aliases, name, winner, "alias")
        reason = body.reason or f"promoted from the rollout's {winner} variant"
        move = await self.gateway.move_alias(
            name, CHAMPION, version, reason=reason, actor=actor, on_behalf_of=on_behalf_of
        )
        ended = await self.end(
            name, actor=actor, on_behalf_of=on_behalf_of, reason=reason, action="promoted"
        )
        return RolloutPromoted(move=move, rollout=ended)

    async def history(self, name: str, limit: int) -> RolloutHistory:
        validate_model_name(name)
        rows = await self.gateway.db_call(db.list_rollout_audit, self.gateway.engine, name, limit)
        return RolloutHistory(name=name, entries=[RolloutHistoryEntry(**row) for row in rows])

    # ---- helpers ---------------------------------------------------------------------------------
    async def _aliases(self, name: str) -> dict[str, int]:
        return registered_aliases(await self.gateway.registered_model(name))

    async def _active(self, name: str) -> db.RolloutRecord:
        validate_model_name(name)
        record = await self.gateway.db_call(db.get_rollout, self.gateway.engine, name)
        if record is None:
            raise NotFound(f"model {name!r} has no rollout", field="name")
        return record

    async def _last_revision(self, name: str, record: db.RolloutRecord | None) -> int:
        if record is not None:
            return record.revision
        entries = await self.gateway.db_call(db.list_rollout_audit, self.gateway.engine, name, 1)
        return int(entries[0]["revision"]) if entries else 0

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _announce(self, name: str, action: str, revision: int) -> None:
        event: dict[str, Any] = {
            "name": name,
            "type": "rollout",
            "action": action,
            "revision": revision,
        }
        try:
            await self.gateway.events.publish(event)
        except Exception as exc:
            self.gateway.metrics.alias_events_failed.inc()
            log.warning(
                "rollout of %s %s but not published (%s); subscribers will see it when they poll",
                name,
                action,
                type(exc).__name__,
            )


def _require(aliases: dict[str, int], name: str, alias: str, field: str) -> int:
    version = aliases.get(alias)
    if version is None:
        raise Unprocessable(
            f"alias {alias!r} of model {name!r} does not name a version", field=field
        )
    return version


def _view(
    name: str, record: db.RolloutRecord | None, aliases: dict[str, int], revision: int
) -> RolloutView:
    if record is None:
        return RolloutView(
            name=name,
            active=False,
            revision=revision,
            variants=[RolloutTarget(alias=CHAMPION, weight=100, version=aliases.get(CHAMPION))],
        )
    spec = record.spec
    mirror = spec.get("mirror")
    return RolloutView(
        name=name,
        active=True,
        revision=record.revision,
        variants=[
            RolloutTarget(alias=v["alias"], weight=v["weight"], version=aliases.get(v["alias"]))
            for v in spec["variants"]
        ],
        mirror=None
        if mirror is None
        else RolloutTarget(alias=mirror, weight=0, version=aliases.get(mirror)),
        sticky_header=spec.get("sticky_header"),
        guard=None if spec.get("guard") is None else RolloutGuard(**spec["guard"]),
        started_at=record.started_at,
        updated_at=record.updated_at,
        actor=record.actor,
        on_behalf_of=record.on_behalf_of,
        reason=record.reason,
    )
