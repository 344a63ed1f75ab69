"""One-shot `api-tokens` job of the compose stack: the platform's own API tokens.

Runs in the model-gateway image once the gateway is healthy (its migrations made the
`api_tokens` table). Makes each service token hold exactly the secret from the env file and its
scopes (idempotent: an unchanged token is left alone, a rotated secret replaces the stored hash).
Only the SHA-256 of each token is stored.

Settings (environment): PLATFORM_DB_URL, and MLOPS_<NAME>_TOKEN for every name below.
"""

from __future__ import annotations

import os
import sys
import time

from mlops_common.auth import TokenStore
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError, ProgrammingError

# name -> scopes (the same as `mlops up` ensures for the local stack)
SERVICE_TOKENS: dict[str, tuple[str, ...]] = {
    # The operator's token (the e2e tests use it as MLOPS_TOKEN).
    "admin": ("admin",),
    # Resolves aliases and promotes the versions it trains.
    "trainer": ("models:read", "models:promote"),
    # Resolves its alias, checks its callers' tokens and ends a rollout whose guard trips (all
    # traffic back to champion; it cannot move aliases) at the gateway.
    "inference": ("models:read", "tokens:introspect", "rollouts:abort"),
    # What the DAGs do: train, watch jobs, read and promote models, check serving.
    "airflow": ("train", "jobs:read", "models:read", "models:promote", "predict"),
}


def main() -> int:
    secrets = {}
    for name in SERVICE_TOKENS:
        var = f"MLOPS_{name.upper()}_TOKEN"
        value = os.environ.get(var, "")
        if not value:
            print(f"api-tokens: {var} is not set", file=sys.stderr)
            return 1
        secrets[name] = value
    engine = create_engine(os.environ["PLATFORM_DB_URL"], pool_pre_ping=True)
    store = TokenStore(engine)
    try:
        for _ in range(30):
            try:
                for name, scopes in SERVICE_TOKENS.items():
                    store.ensure(name, secrets[name], scopes)
                    print(f"api-tokens: {name} ({' '.join(scopes)})", flush=True)
                return 0
            except (OperationalError, ProgrammingError) as exc:  # database or table not there yet
                print(f"api-tokens: not ready ({type(exc).__name__}); retrying", flush=True)
                time.sleep(2)
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
