"""Tokens: what the store keeps, and how long a verifier trusts an answer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from mlops_common.auth import (
    SCOPES,
    Principal,
    TokenStore,
    TokenVerifier,
    api_tokens,
    database_source,
    metadata,
    parse_duration,
    requires,
)
from mlops_common.errors import Forbidden, ServiceUnavailable, Unauthorized


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'tokens.db'}")
    metadata.create_all(engine)
    return TokenStore(engine)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_random_and_only_their_hash_is_stored(store: TokenStore) -> None:
    first, _ = store.create("a", ["predict"])
    second, _ = store.create("b", ["predict"])
    assert first != second and len(first) - len("mlops_") >= 43  # 256 bits, URL-safe base64
    with store.engine.connect() as conn:
        stored = " ".join(map(str, conn.execute(sa.select(api_tokens)).all()))
    assert first not in stored and second not in stored


def test_a_revoked_token_is_refused_once_the_cache_ttl_has_passed(store: TokenStore) -> None:
    clock = Clock()
    verifier = TokenVerifier(database_source(store), ttl_s=5.0, clock=clock)
    secret, _ = store.create("ci", ["train"])

    async def scenario() -> list[str]:
        seen = [(await verifier.verify(f"Bearer {secret}")).name]
        store.revoke("ci")
        clock.now += 4.9  # still trusted from the cache
        seen.append((await verifier.verify(f"Bearer {secret}")).name)
        clock.now += 0.2
        try:
            await verifier.verify(f"Bearer {secret}")
        except Unauthorized:
            seen.append("refused")
        return seen

    assert asyncio.run(scenario()) == ["ci", "ci", "refused"]


def test_an_expired_token_is_refused_even_from_the_cache(store: TokenStore) -> None:
    secret, _ = store.create("short", ["predict"], expires_in=timedelta(days=1))
    principal = store.lookup(secret)
    assert principal is not None and principal.expires_at is not None

    async def answer(_: str) -> Principal:
        return Principal(
            "short", frozenset({"predict"}), "*", principal.expires_at - timedelta(days=2)
        )

    with pytest.raises(Unauthorized, match="expired"):
        asyncio.run(TokenVerifier(answer).verify(f"Bearer {secret}"))


def test_a_database_failure_is_a_503_not_a_refusal(tmp_path: Path) -> None:
    broken = TokenStore(sa.create_engine(f"sqlite:///{tmp_path / 'none' / 'x.db'}"))
    verifier = TokenVerifier(database_source(broken))
    with pytest.raises(ServiceUnavailable):
        asyncio.run(verifier.verify("Bearer mlops_" + "a" * 43))


def test_tokens_seen_valid_outlive_an_outage_of_the_source_within_the_grace() -> None:
    clock = Clock()
    answers: dict[str, Principal | None] = {
        "mlops_known": Principal("known", frozenset({"predict"}), "*"),
        "mlops_stranger": None,
    }
    down = False

    async def source(token: str) -> Principal | None:
        if down:
            raise ServiceUnavailable("cannot check the token: the gateway is unreachable")
        return answers.get(token)

    verifier = TokenVerifier(source, ttl_s=5.0, stale_grace_s=60.0, clock=clock)

    async def verdict(token: str) -> str:
        try:
            return (await verifier.verify(f"Bearer {token}")).name
        except (Unauthorized, ServiceUnavailable) as exc:
            return type(exc).__name__

    async def scenario() -> list[str]:
        nonlocal down
        seen = [await verdict("mlops_known"), await verdict("mlops_stranger")]
        down = True
        clock.now += 30  # past the TTL: the source is asked, and is down
        seen += [await verdict("mlops_known"), await verdict("mlops_stranger")]
        seen.append(await verdict("mlops_never_seen"))
        clock.now += 31  # past the grace
        seen.append(await verdict("mlops_known"))
        down = False
        seen.append(await verdict("mlops_known"))
        return seen

    assert asyncio.run(scenario()) == [
        "known",
        "Unauthorized",
        "known",  # served through the outage
        "ServiceUnavailable",  # an unknown token is never let through
        "ServiceUnavailable",
        "ServiceUnavailable",  # the grace is over
        "known",
    ]


def test_a_restarted_service_remembers_valid_tokens_from_its_snapshot(tmp_path: Path) -> None:
    snapshot = tmp_path / "cache" / "token-verdicts.json"
    wall = Clock()
    wall.now = 1_000_000.0
    secret = "mlops_" + "s" * 43

    async def up(token: str) -> Principal | None:
        return Principal("caller", frozenset({"predict"}), "churn*") if token == secret else None

    async def down(_: str) -> Principal | None:
        raise ServiceUnavailable("cannot check the token: the gateway is unreachable")

    def verifier(source: Any) -> TokenVerifier:
        return TokenVerifier(source, stale_grace_s=300.0, snapshot=snapshot, wall_clock=wall)

    async def verdict(v: TokenVerifier, token: str) -> str:
        try:
            principal = await v.verify(f"Bearer {token}")
        except (Unauthorized, ServiceUnavailable) as exc:
            return type(exc).__name__
        return f"{principal.name} {principal.models}"

    async def scenario() -> list[str]:
        seen = [await verdict(verifier(up), secret)]
        wall.now += 200  # restarted while the source is down, within the grace
        restarted = verifier(down)
        seen.append(await verdict(restarted, secret))
        seen.append(await verdict(restarted, "mlops_" + "x" * 43))
        wall.now += 101  # past the grace
        seen.append(await verdict(verifier(down), secret))
        return seen

    assert asyncio.run(scenario()) == [
        "caller churn*",
        "caller churn*",
        "ServiceUnavailable",
        "ServiceUnavailable",
    ]
    assert snapshot.stat().st_mode & 0o777 == 0o600
    assert secret not in snapshot.read_text()


def test_without_a_grace_an_outage_of_the_source_is_a_503() -> None:
    clock = Clock()
    calls = 0

    async def source(_: str) -> Principal | None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ServiceUnavailable("down")
        return Principal("known", frozenset({"predict"}), "*")

    verifier = TokenVerifier(source, ttl_s=5.0, clock=clock)

    async def scenario() -> None:
        await verifier.verify("Bearer mlops_known")
        clock.now += 6
        await verifier.verify("Bearer mlops_known")

    with pytest.raises(ServiceUnavailable):
        asyncio.run(scenario())


def test_scopes_admin_and_model_globs() -> None:
    churn = Principal("c", frozenset({"predict"}), "churn*")
    churn.require("predict", "churn-eu")
    with pytest.raises(Forbidden, match="'fraud'"):
        churn.require("predict", "fraud")
    with pytest.raises(Forbidden, match="'train'"):
        churn.require("train", "churn")
    Principal("root", frozenset({"admin"})).require("models:promote", "anything")
    assert Principal("x", frozenset(), "a_b*").sql_like() == "a\\_b%"


@pytest.mark.parametrize(
    ("text", "expected"), [("30d", timedelta(days=30)), ("90m", timedelta(minutes=90))]
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    with pytest.raises(ValueError):
        parse_duration("0d")


def test_any_of_several_scopes_is_enough_and_a_refusal_names_them_all() -> None:
    either = ("models:promote", "rollouts:abort")
    Principal("guard", frozenset({"rollouts:abort"}), "iris").require(either, "iris")
    Principal("promoter", frozenset({"models:promote"})).require(either, "iris")
    Principal("root", frozenset({"admin"})).require(either, "iris")
    with pytest.raises(Forbidden, match="'models:promote' or 'rollouts:abort'") as refused:
        Principal("reader", frozenset({"models:read"})).require(either, "iris")
    assert refused.value.details == {"scopes": list(either)}
    with pytest.raises(Forbidden, match="'iris'"):
        Principal("guard", frozenset({"rollouts:abort"}), "churn*").require(either, "iris")
    # The abort scope opens nothing that needs promote.
    with pytest.raises(Forbidden, match=r"'models:promote'$"):
        Principal("guard", frozenset({"rollouts:abort"})).require("models:promote", "iris")


def test_requires_refuses_unknown_scopes_when_the_route_is_declared() -> None:
    assert "rollouts:abort" in SCOPES
    requires(("models:promote", "rollouts:abort"), model_param="name")
    for bad in ("rollout:abort", ("models:promote", "rollout:abort"), ()):
        with pytest.raises(ValueError, match="known scopes"):
            requires(bad)
