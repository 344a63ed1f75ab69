from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlops_common.auth import TokenStore
from mlops_common.auth import metadata as auth_metadata
from mlops_common.db import migrate
from sqlalchemy import Engine, create_engine
from trainer.app import MIGRATIONS, VERSION_TABLE, create_app
from trainer.jobs import JobStore
from trainer.settings import TrainerSettings


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False

    def enqueue(self, job_id: str) -> None:
        if self.down:
            raise ConnectionError("redis is down")
        self.sent.append(job_id)

    def workers(self) -> list[str]:
        return ["trainer@test"]

    def broker_ok(self) -> bool:
        return not self.down


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    migrate(url, MIGRATIONS, VERSION_TABLE)
    return url


ADMIN_TOKEN = "mlops_" + "t" * 43


@pytest.fixture
def engine(db_url: str) -> Engine:
    engine = create_engine(db_url)
    # The gateway migrates the token table in the real stack; here the test makes it.
    auth_metadata.create_all(engine)
    TokenStore(engine).ensure("test-admin", ADMIN_TOKEN, ["admin"])
    return engine


@pytest.fixture
def tokens(engine: Engine) -> TokenStore:
    return TokenStore(engine)


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def settings(db_url: str, monkeypatch: pytest.MonkeyPatch) -> TrainerSettings:
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("PLATFORM_DB_URL", db_url)
    return TrainerSettings(environment="test")


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def client(settings: TrainerSettings, engine: Engine, queue: FakeQueue) -> Iterator[TestClient]:
    app = create_app(settings, engine=engine, queue=queue, objects=object(), run_migrations=False)  # type: ignore[arg-type]
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as test_client:
        yield test_client
