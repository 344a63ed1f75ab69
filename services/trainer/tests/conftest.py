from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from mlops_common.auth import TokenStore
from mlops_common.auth import metadata as auth_metadata
from mlops_common.db import migrate
from mlops_common.storage import ObjectTooLarge, S3Uri, StoredObject
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool
from trainer.app import MIGRATIONS, VERSION_TABLE, create_app
from trainer.jobs import JobStore
from trainer.settings import TrainerSettings

# Longest a test waits for something the code under test does in another thread.
WAIT_S = 10.0


class FakeQueue:
    """A broker in memory that can be down (calls fail at once) or frozen (calls block until
    thawed, as on a SIGSTOPped Redis whose socket timeouts have not expired yet)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.marks: dict[str, str] = {}
        self.worker_names = ["trainer@test"]
        self.down = False
        self.pings = 0
        self._thawed = threading.Event()
        self._thawed.set()
        self._changed = threading.Condition()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def lose_everything(self) -> None:
        """A broker restarted without its data: messages and marker keys are gone."""
        self.sent.clear()
        self.marks.clear()

    def _call(self) -> None:
        if not self._thawed.wait(WAIT_S):
            raise TimeoutError("the fake broker stayed frozen")
        if self.down:
            raise ConnectionError("redis is down")

    def enqueue(self, job_id: str) -> None:
        self._call()
        with self._changed:
            self.sent.append(job_id)
            self._changed.notify_all()

    def ping(self) -> None:
        self.pings += 1
        self._call()

    def workers(self, timeout_s: float) -> list[str]:
        self._call()
        return list(self.worker_names)

    def read_mark(self, key: str) -> str | None:
        self._call()
        return self.marks.get(key)

    def write_mark(self, key: str, value: str, ttl_s: int) -> None:
        self._call()
        self.marks[key] = value

    def wait_until(self, done: Callable[[list[str]], bool]) -> bool:
        """Whether ``done(sent)`` came true within WAIT_S (checked at every send)."""
        with self._changed:
            return self._changed.wait_for(lambda: done(self.sent), WAIT_S)


class DatabaseSwitch:
    """Connections to the test database that fail, as to a stopped PostgreSQL, while ``down``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.down = False

    def connect(self) -> sqlite3.Connection:
        if self.down:
            raise sqlite3.OperationalError("unable to open database file")
        return sqlite3.connect(self.path, check_same_thread=False)


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
def database(db_url: str, engine: Engine) -> DatabaseSwitch:
    return DatabaseSwitch(db_url.removeprefix("sqlite:///"))


@pytest.fixture
def flaky_engine(database: DatabaseSwitch) -> Engine:
    """The test database through ``database``: every call connects, so every call fails while
    it is down and works again once it is up (as pre-ping does after a restart)."""
    return create_engine("sqlite://", creator=database.connect, poolclass=NullPool)


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


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """A local MLflow tracking store (SQLite, artifacts in a folder) with experiment ``tests``."""
    # set_tracking_uri also writes MLFLOW_TRACKING_URI: monkeypatch puts the variable back.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        yield MlflowClient()
    finally:
        # None: a URI left set would send every later MLflow call in this process there.
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


class MemoryObjectStore:
    """The ObjectStore calls the trainer makes, on objects in memory; ``down`` fails them all."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("the object store is unreachable")

    def put_bytes(self, uri: S3Uri, data: bytes) -> None:
        self.objects[str(uri)] = data

    def put_dir(self, root: Path, prefix: S3Uri) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = f"{prefix.key.rstrip('/')}/{path.relative_to(root).as_posix()}"
                self.put_bytes(S3Uri(prefix.bucket, key), path.read_bytes())

    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes:
        self._check()
        data = self.objects[str(uri)]
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(uri, len(data))
        return data

    def size(self, uri: S3Uri) -> int:
        self._check()
        return len(self.objects[str(uri)])

    def list_objects(self, prefix: S3Uri) -> list[StoredObject]:
        self._check()
        start = f"s3://{prefix.bucket}/{prefix.key}"
        return [
            StoredObject(uri.removeprefix(f"s3://{prefix.bucket}/"), len(data), "etag")
            for uri, data in sorted(self.objects.items())
            if uri.startswith(start)
        ]

    def download_file(self, uri: S3Uri, filename: str) -> None:
        self._check()
        Path(filename).write_bytes(self.objects[str(uri)])
