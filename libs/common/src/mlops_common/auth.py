"""API tokens: bearer tokens with scopes and a model-name pattern, stored only as hashes.

A token is ``mlops_`` followed by 43 URL-safe characters (256 random bits). It is shown once,
when created; the platform database keeps its SHA-256 (a slow hash adds nothing for a random
256-bit secret), its name, scopes, model pattern, creation time, optional expiry, revocation and
last use. The gateway owns the table (its migrations) and the ``/v1/tokens`` API; the stack's
``mlops token`` command and the trainer use the same ``TokenStore``; inference asks the gateway.

Every service checks tokens through a ``TokenVerifier`` with a short cache, so the prediction
path costs a dict lookup, and a revoked token stops working within ``cache_ttl_s`` everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Protocol

import sqlalchemy as sa
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from mlops_common.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)

log = logging.getLogger(__name__)

TOKEN_PREFIX = "mlops_"  # noqa: S105 - a prefix that makes leaked tokens findable, not a secret
SCOPES: tuple[str, ...] = (
    "train",
    "jobs:read",
    "models:read",
    "models:promote",
    "predict",
    "admin",
    # For services that check tokens through the gateway (inference) rather than the database.
    "tokens:introspect",
    # Ending a model's rollout and nothing else (``POST .../rollout/abort``): for inference, whose
    # guard ends a rollout when a variant misbehaves. Aborting is the fail-safe direction (all
    # traffic back to champion), so the serving side gets it without ``models:promote``, which
    # could also move aliases and start rollouts.
    "rollouts:abort",
)
# Token names are shown in audit trails and logs: plain words only.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
# Model-name globs: names may use these characters, plus * and ? as wildcards.
MODELS_PATTERN = re.compile(r"^[A-Za-z0-9_.*?-]{1,256}$")
_TOKEN_SHAPE = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}$")
_DURATION = re.compile(r"^(\d{1,5})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

metadata = sa.MetaData()

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.String(512), nullable=False),
    sa.Column("models", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` → a timedelta (for ``--expires``)."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"expected a duration such as 30d, 12h, 90m or 2w, got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(scopes))
    if not chosen:
        raise ValueError("at least one scope is needed")
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; choose from {', '.join(SCOPES)}")
    return chosen


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            "must be 1-64 characters: letters, digits and _ . : @ -, starting with a letter or digit"
        )
    return name


def check_models(pattern: str) -> str:
    if not MODELS_PATTERN.match(pattern):
        raise ValueError("must be a model name or a glob of letters, digits, _ . - * ?")
    return pattern


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to and what it may do."""

    name: str
    scopes: frozenset[str]
    models: str = "*"
    expires_at: datetime | None = None
    # Decisions per model name, filled as they are made (the pattern never changes).
    _model_cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_use(self, model_name: str) -> bool:
        allowed = self._model_cache.get(model_name)
        if allowed is None:
            allowed = fnmatchcase(model_name, self.models)
            if len(self._model_cache) < 1024:
                self._model_cache[model_name] = allowed
        return allowed

    def require(self, scope: str | tuple[str, ...], model_name: str | None = None) -> None:
        """Raise 403 naming the scope (or the model) this principal lacks.

        ``scope`` is one scope, or a tuple of scopes any one of which is enough.
        """
        wanted = (scope,) if isinstance(scope, str) else scope
        if not wanted:
            raise ValueError("require needs at least one scope")
        # The 403's details: ``scope`` for one, ``scopes`` (any of them) for several.
        details: dict[str, str | list[str]] = (
            {"scope": wanted[0]} if len(wanted) == 1 else {"scopes": list(wanted)}
        )
        if not any(self.has(s) for s in wanted):
            raise Forbidden(
                f"token {self.name!r} lacks the scope {' or '.join(map(repr, wanted))}",
                field="Authorization",
                **details,
            )
        if model_name is not None and not self.may_use(model_name):
            raise Forbidden(
                f"token {self.name!r} may not use model {model_name!r} "
                f"(limited to {self.models!r})",
                field="Authorization",
                **details,
            )

    def covers(self, pattern: str) -> bool:
        """Whether every model name ``pattern`` matches is one this principal may use.

        Conservative: a glob is covered only by ``*`` or by the same glob; a plain name by any
        pattern matching it.
        """
        if self.models == "*" or pattern == self.models:
            return True
        return not any(char in pattern for char in "*?[") and self.may_use(pattern)

    def sql_like(self) -> str | None:
        """The model pattern as a SQL LIKE pattern (``None`` for every model)."""
        if self.models == "*":
            return None
        escaped = self.models.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return escaped.replace("*", "%").replace("?", "_")


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as listings show it: never the secret."""

    name: str
    scopes: tuple[str, ...]
    models: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (
            self.expires_at is None or self.expires_at > datetime.now(UTC)
        )


def _utc(value: datetime | None) -> datetime | None:
    # SQLite drops the offset on the way back; every value was written in UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _info(row: sa.RowMapping) -> TokenInfo:
    return TokenInfo(
        name=row["name"],
        scopes=tuple(row["scopes"].split()),
        models=row["models"],
        created_at=_utc(row["created_at"]) or datetime.now(UTC),
        expires_at=_utc(row["expires_at"]),
        revoked_at=_utc(row["revoked_at"]),
        last_used_at=_utc(row["last_used_at"]),
    )


class TokenStore:
    """The ``api_tokens`` table. Blocking (SQLAlchemy core): async callers use a thread."""

    def __init__(self, engine: Engine, *, last_used_every_s: float = 60.0) -> None:
        self.engine = engine
        self._last_used_every = timedelta(seconds=last_used_every_s)

    def create(
        self,
        name: str,
        scopes: Iterable[str],
        models: str = "*",
        expires_in: timedelta | None = None,
        token: str | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token (the secret is returned once); a taken name is a 409."""
        check_name(name)
        chosen = check_scopes(scopes)
        check_models(models)
        secret = token or new_token()
        now = datetime.now(UTC)
        expires_at = now + expires_in if expires_in else None
        values = {
            "name": name,
            "token_sha256": token_hash(secret),
            "scopes": " ".join(chosen),
            "models": models,
            "created_at": now,
            "expires_at": expires_at,
        }
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.select(api_tokens.c.id).where(api_tokens.c.name == name)
            ).first()
            if taken is not None:
                raise Conflict(f"a token named {name!r} exists; revoke it first", field="name")
            conn.execute(api_tokens.insert().values(**values))
        return secret, TokenInfo(name, chosen, models, now, expires_at, None, None)

    def ensure(self, name: str, token: str, scopes: Iterable[str], models: str = "*") -> None:
        """Make ``name`` hold exactly this secret and scopes (the stack's own service tokens).

        A changed secret replaces the stored one: rotating a service token is rewriting it.
        """
        check_name(name)
        chosen = " ".join(check_scopes(scopes))
        check_models(models)
        digest = token_hash(token)
        with self.engine.begin() as conn:
            row = (
                conn.execute(sa.select(api_tokens).where(api_tokens.c.name == name))
                .mappings()
                .first()
            )
            if row is None:
                conn.execute(
                    api_tokens.insert().values(
                        name=name,
                        token_sha256=digest,
                        scopes=chosen,
                        models=models,
                        created_at=datetime.now(UTC),
                    )
                )
            elif (row["token_sha256"], row["scopes"], row["models"], row["revoked_at"]) != (
                digest,
                chosen,
                models,
                None,
            ):
                conn.execute(
                    api_tokens.update()
                    .where(api_tokens.c.name == name)
                    .values(
                        token_sha256=digest,
                        scopes=chosen,
                        models=models,
                        revoked_at=None,
                        expires_at=None,
                    )
                )

    def list(self) -> list[TokenInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_tokens).order_by(api_tokens.c.name)).mappings()
            return [_info(row) for row in rows]

    def revoke(self, name: str) -> TokenInfo:
        """Revoke by name (idempotent); an unknown name is a 404."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (
                conn.execute(sa.select(api_tokens).where(api_tokens.c.name == name))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"no token named {name!r}", field="name")
        return _info(row)

    def lookup(self, token: str) -> Principal | None:
        """The principal of an active token, else ``None``; records its last use."""
        if not _TOKEN_SHAPE.match(token):
            return None
        now = datetime.now(UTC)
        digest = token_hash(token)
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(api_tokens).where(api_tokens.c.token_sha256 == digest))
                .mappings()
                .first()
            )
        if row is None:
            return None
        info = _info(row)
        if not info.active:
            return None
        if info.last_used_at is None or now - info.last_used_at > self._last_used_every:
            with self.engine.begin() as conn:
                conn.execute(
                    api_tokens.update().where(api_tokens.c.id == row["id"]).values(last_used_at=now)
                )
        return Principal(info.name, frozenset(info.scopes), info.models, info.expires_at)


class TokenSource(Protocol):
    """Where a verifier asks about a token it has not seen lately."""

    async def __call__(self, token: str) -> Principal | None: ...


def database_source(store: TokenStore) -> TokenSource:
    async def lookup(token: str) -> Principal | None:
        try:
            return await asyncio.to_thread(store.lookup, token)
        except SQLAlchemyError as exc:
            # Not the client's fault and not a verdict on the token: retry later.
            raise ServiceUnavailable(
                f"cannot check the token: the platform database failed ({type(exc).__name__})"
            ) from exc

    return lookup


class TokenVerifier:
    """Checks bearer tokens against a source, remembering answers for a few seconds.

    Valid tokens are remembered for ``ttl_s`` (the longest a revocation takes to bite), unknown
    ones for ``negative_ttl_s`` so a flood of bad tokens cannot flood the source. Concurrent
    first requests with one token share a single lookup.

    With ``stale_grace_s``, a token found valid within that many seconds is still accepted while
    the source is unavailable (``ServiceUnavailable``): callers keep being served through an
    outage of the token store. During such an outage a revocation bites only once the source
    answers again or the grace runs out. Unknown tokens are never let through this way.

    With a ``snapshot`` file as well, those verdicts (token hashes, never tokens, and what each
    token may do) are kept on disk, private to the service's user, so a service restarted
    during the outage still serves the callers it served just before.
    """

    def __init__(
        self,
        source: TokenSource | Callable[[str], Awaitable[Principal | None]],
        *,
        ttl_s: float = 5.0,
        negative_ttl_s: float = 1.0,
        stale_grace_s: float = 0.0,
        snapshot: Path | None = None,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._stale_grace = stale_grace_s
        self._max = max_entries
        self._clock = clock
        # token -> (fresh until, principal, when it was last found valid)
        self._cache: dict[str, tuple[float, Principal | None, float]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        self._outage_logged = False
        self._wall = wall_clock
        self._snapshot = snapshot if stale_grace_s > 0 else None
        # token hash -> (principal, wall time it was last found valid); from the snapshot file
        self._remembered: dict[str, tuple[Principal, float]] = (
            _read_snapshot(self._snapshot) if self._snapshot else {}
        )

    async def verify(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header value, else a 401."""
        token = bearer_token(authorization)
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            try:
                principal = await self._lookup(token, now)
            except ServiceUnavailable as exc:
                principal = self._stale(token, hit, now, exc)
        if principal is None:
            raise Unauthorized("the token is unknown, expired or revoked", invalid_token=True)
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            self._cache.pop(token, None)
            raise Unauthorized("the token has expired", invalid_token=True)
        return principal

    async def _lookup(self, token: str, now: float) -> Principal | None:
        pending = self._pending.get(token)
        if pending is not None:
            return await pending
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            principal = await self._source(token)
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting; the exception is re-raised here either way.
            future.exception()
            raise
        finally:
            self._pending.pop(token, None)
        future.set_result(principal)
        if self._outage_logged:
            log.info("token checks answer again")
            self._outage_logged = False
        if len(self._cache) >= self._max:
            self._evict(now)
        ttl = self._ttl if principal is not None else self._negative_ttl
        self._cache[token] = (now + ttl, principal, now)
        if self._snapshot is not None and principal is not None:
            await self._remember(token, principal)
        return principal

    async def _remember(self, token: str, principal: Principal) -> None:
        key, wall = token_hash(token), self._wall()
        known = self._remembered.get(key)
        # Rewritten when a verdict is new or changed, or a quarter of the grace old: the file
        # stays fresh enough without a write per lookup.
        if known and known[0] == principal and wall - known[1] < self._stale_grace / 4:
            return
        self._remembered[key] = (principal, wall)
        cutoff = wall - self._stale_grace
        self._remembered = {k: v for k, v in self._remembered.items() if v[1] >= cutoff}
        assert self._snapshot is not None
        try:
            await asyncio.to_thread(_write_snapshot, self._snapshot, dict(self._remembered))
        except OSError as exc:
            log.warning("cannot keep token verdicts in %s: %s", self._snapshot, exc)

    def _stale(
        self,
        token: str,
        hit: tuple[float, Principal | None, float] | None,
        now: float,
        unavailable: ServiceUnavailable,
    ) -> Principal:
        """The last verdict on a token while the source is down: valid within the grace only."""
        principal: Principal | None = None
        if hit is not None and hit[1] is not None and now - hit[2] <= self._stale_grace:
            principal = hit[1]
        elif self._remembered:
            known = self._remembered.get(token_hash(token))
            if known is not None and self._wall() - known[1] <= self._stale_grace:
                principal = known[0]
        if principal is None:
            raise unavailable
        if not self._outage_logged:
            log.warning(
                "token checks are unavailable; accepting tokens found valid in the last %.0fs",
                self._stale_grace,
            )
            self._outage_logged = True
        return principal

    def forget(self, name: str) -> None:
        """Drop what is remembered about the tokens of ``name`` (after a local revocation)."""
        for key in [k for k, (_, p, _) in self._cache.items() if p is not None and p.name == name]:
            del self._cache[key]
        for key in [k for k, (p, _) in self._remembered.items() if p.name == name]:
            del self._remembered[key]
        if self._snapshot is not None:
            _write_snapshot(self._snapshot, dict(self._remembered))

    def _evict(self, now: float) -> None:
        grace = self._stale_grace
        for key in [k for k, (until, _, _) in self._cache.items() if until <= now - grace]:
            del self._cache[key]
        if len(self._cache) >= self._max:
            self._cache.clear()


def _read_snapshot(path: Path) -> dict[str, tuple[Principal, float]]:
    """Verdicts a previous run kept; a missing or unreadable file is an empty memory."""
    try:
        raw = json.loads(path.read_text())
        return {
            key: (
                Principal(
                    name=str(entry["name"]),
                    scopes=frozenset(entry["scopes"]),
                    models=str(entry["models"]),
                    expires_at=(
                        datetime.fromisoformat(entry["expires_at"]) if entry["expires_at"] else None
                    ),
                ),
                float(entry["seen"]),
            )
            for key, entry in raw["verdicts"].items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the token verdicts in %s: %s", path, exc)
        return {}


def _write_snapshot(path: Path, verdicts: dict[str, tuple[Principal, float]]) -> None:
    body = {
        "verdicts": {
            key: {
                "name": p.name,
                "scopes": sorted(p.scopes),
                "models": p.models,
                "expires_at": p.expires_at.isoformat() if p.expires_at else None,
                "seen": seen,
            }
            for key, (p, seen) in verdicts.items()
        }
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    # Private from the first byte: what each token may do is nobody else's business.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh)
    os.replace(partial, path)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, else a 401."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "malformed Authorization header; expected 'Bearer <token>'", invalid_token=True
        )
    return token


# Declares the scheme in the OpenAPI document (the docs' "Authorize" button); the header itself
# is read by ``TokenVerifier`` so a malformed one gets the platform's own 401.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token: `uv run mlops token create NAME --scope ...` or POST /v1/tokens",
)


def requires(
    scope: str | tuple[str, ...], *, model_param: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the request's principal, which must hold ``scope``.

    ``scope`` may be a tuple of scopes: holding any one of them is enough (a 403 names them
    all). With ``model_param``, the path parameter of that name is a model name the token must
    be allowed to use. The app keeps its ``TokenVerifier`` on ``app.state.verifier``.
    """
    wanted = (scope,) if isinstance(scope, str) else tuple(scope)
    unknown = [s for s in wanted if s not in SCOPES]
    if not wanted or unknown:
        # A typo here would refuse every request: fail when the route is declared instead.
        raise ValueError(f"requires() needs known scopes, got {scope!r}")

    async def dependency(
        request: Request,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Principal:
        verifier: TokenVerifier = request.app.state.verifier
        principal = await verifier.verify(request.headers.get("authorization"))
        model = request.path_params.get(model_param) if model_param else None
        principal.require(wanted, model)
        return principal

    return dependency


__all__ = [
    "BEARER",
    "SCOPES",
    "Principal",
    "TokenInfo",
    "TokenSource",
    "TokenStore",
    "TokenVerifier",
    "bearer_token",
    "check_models",
    "check_name",
    "check_scopes",
    "database_source",
    "new_token",
    "parse_duration",
    "requires",
    "token_hash",
]
