"""Managing API tokens over HTTP (scope ``admin``) and answering introspection for services
that cannot read the token table themselves (inference)."""

from __future__ import annotations

import asyncio
import logging

from mlops_common.auth import Principal, TokenInfo, TokenStore, TokenVerifier, parse_duration
from mlops_common.errors import Forbidden, NotFound

from model_gateway.schemas import (
    CreatedToken,
    CreateTokenRequest,
    Introspection,
    TokenList,
    TokenView,
)

log = logging.getLogger(__name__)


def _view(info: TokenInfo) -> TokenView:
    return TokenView(
        name=info.name,
        scopes=list(info.scopes),
        models=info.models,
        created_at=info.created_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        last_used_at=info.last_used_at,
        active=info.active,
    )


class TokensHandler:
    def __init__(self, store: TokenStore, verifier: TokenVerifier) -> None:
        self.store = store
        # Revocations through this gateway bite here at once; elsewhere within the cache TTL.
        self.verifier = verifier

    async def create(self, body: CreateTokenRequest, by: Principal) -> CreatedToken:
        # An admin limited to some models hands out nothing wider than its own limit, or it
        # could mint itself an unlimited admin.
        if not by.covers(body.models):
            raise Forbidden(
                f"token {by.name!r} is limited to models {by.models!r} and cannot create a "
                f"token for {body.models!r}",
                field="models",
                scope="admin",
            )
        expires = parse_duration(body.expires_in) if body.expires_in else None
        secret, info = await asyncio.to_thread(
            self.store.create, body.name, body.scopes, body.models, expires
        )
        log.info("token %r created by %r (scopes %s)", info.name, by.name, " ".join(info.scopes))
        return CreatedToken(**_view(info).model_dump(), token=secret)

    async def list(self, by: Principal) -> TokenList:
        infos = await asyncio.to_thread(self.store.list)
        return TokenList(tokens=[_view(info) for info in infos if by.covers(info.models)])

    async def revoke(self, name: str, by: Principal) -> TokenView:
        if by.models != "*":
            known = {info.name: info for info in await asyncio.to_thread(self.store.list)}
            target = known.get(name)
            # Tokens outside its limit are not its business: as unknown to it as missing ones.
            if target is None or not by.covers(target.models):
                raise NotFound(f"no token named {name!r}", field="name")
        info = await asyncio.to_thread(self.store.revoke, name)
        self.verifier.forget(name)
        log.info("token %r revoked by %r", name, by.name)
        return _view(info)

    async def introspect(self, token: str) -> Introspection:
        principal = await asyncio.to_thread(self.store.lookup, token)
        if principal is None:
            return Introspection(active=False)
        return Introspection(
            active=True,
            name=principal.name,
            scopes=sorted(principal.scopes),
            models=principal.models,
            expires_at=principal.expires_at,
        )
