"""A worker rides out a short database outage: the claim and the outcome are retried, so a job
that finishes while PostgreSQL restarts is recorded, not left running for the stale-job recovery."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import pytest
from celery.exceptions import Reject
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT,
)
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from trainer.jobs import Job, JobStore
from trainer.retry import retry_db
from trainer.schemas import TrainRequest
from trainer.settings import TrainerSettings
from trainer.training import TrainingResult

from .conftest import DatabaseSwitch

IRIS = {"model_name": "iris", "dataset": {"builtin": "iris"}}


class FakeClock:
    """Time that passes only when slept; ``on_sleep(now)`` runs after each sleep."""

    def __init__(self, on_sleep: Callable[[float], None] = lambda _now: None) -> None:
        self.now = 0.0
        self.on_sleep = on_sleep

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep(self.now)


class Finishes:
    """A trainer whose job ends as ``at_the_end`` says (a database outage starting, say)."""

    def __init__(self, at_the_end: Callable[[], None] = lambda: None) -> None:
        self.at_the_end = at_the_end

    def run(self, request: TrainRequest, job_id: str) -> TrainingResult:
        self.at_the_end()
        return TrainingResult("classification", "logistic_regression", "run-1", 3, {"f1": 0.9})


@pytest.fixture
def worker(settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TRAINER_SIGNING_KEY", "test-signing-key")
    return importlib.import_module("trainer.worker")


def run_job(
    worker: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    store: JobStore,
    trainer: Finishes,
    clock: FakeClock,
) -> Any:
    monkeypatch.setattr(worker, "_runtime", lambda: (store, trainer, None))
    monkeypatch.setattr(worker, "retry_db", partial(retry_db, sleep=clock.sleep, clock=clock.time))
    job, _ = store.create("iris", IRIS, None)
    return job.id, worker.train_job(job.id)


def test_a_20s_outage_as_the_job_finishes_still_records_its_success(
    worker: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    flaky_engine: Engine,
    database: DatabaseSwitch,
) -> None:
    store = JobStore(flaky_engine)
    clock = FakeClock(on_sleep=lambda now: setattr(database, "down", now < 20))
    job_id, outcome = run_job(
        worker, monkeypatch, store, Finishes(lambda: setattr(database, "down", True)), clock
    )
    assert outcome == "succeeded"
    final = store.get(job_id)
    assert final is not None and (final.status, final.model_version) == ("succeeded", 3)
    assert 20 <= clock.now <= 30


def test_a_longer_outage_leaves_the_job_to_the_stale_job_recovery(
    worker: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    flaky_engine: Engine,
    database: DatabaseSwitch,
) -> None:
    store = JobStore(flaky_engine)
    clock = FakeClock()
    job_id, outcome = run_job(
        worker, monkeypatch, store, Finishes(lambda: setattr(database, "down", True)), clock
    )
    assert outcome == "unrecorded"
    assert clock.now == pytest.approx(worker.settings.db_retry_s)
    database.down = False
    final = store.get(job_id)
    assert final is not None and final.status == "running"


def test_a_claim_the_database_never_answers_goes_back_to_the_queue(
    worker: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    flaky_engine: Engine,
    database: DatabaseSwitch,
) -> None:
    store = JobStore(flaky_engine)
    job, _ = store.create("iris", IRIS, None)
    monkeypatch.setattr(worker, "_runtime", lambda: (store, Finishes(), None))
    clock = FakeClock()
    monkeypatch.setattr(worker, "retry_db", partial(retry_db, sleep=clock.sleep, clock=clock.time))
    database.down = True
    with pytest.raises(Reject) as rejected:
        worker.train_job(job.id)
    assert rejected.value.requeue is True
    database.down = False
    again = store.get(job.id)
    assert again is not None and again.status == "queued"


class ClaimLosesItsAnswer(JobStore):
    """The first claim commits, then the connection breaks before the answer arrives."""

    broke = False

    def claim(self, job_id: str, worker: str) -> Job | None:
        job = super().claim(job_id, worker)
        if not self.broke:
            self.broke = True
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return job


def test_a_claim_that_committed_before_its_connection_broke_is_kept(
    worker: ModuleType, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    store = ClaimLosesItsAnswer(engine)
    job_id, outcome = run_job(worker, monkeypatch, store, Finishes(), FakeClock())
    assert outcome == "succeeded"
    final = store.get(job_id)
    assert final is not None and (final.status, final.attempts) == ("succeeded", 1)


def test_mlflow_reads_the_request_bounds_the_worker_sets(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings.mlflow_client_env().items():
        monkeypatch.setenv(name, value)
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == settings.mlflow_timeout_s == 60
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == settings.mlflow_max_retries == 5


def outage(failures: int, error: Exception) -> Callable[[], str]:
    calls = 0

    def call() -> str:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise error
        return f"done after {calls} calls"

    return call


DOWN = OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_retry_logs_an_outage_once_and_once_when_through(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="trainer.retry"):
        result = retry_db(
            outage(6, DOWN), budget_s=60, what="job x: claim", sleep=clock.sleep, clock=clock.time
        )
    assert result == "done after 7 calls"
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_retry_gives_up_after_its_budget(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with pytest.raises(OperationalError):
        retry_db(outage(1000, DOWN), budget_s=60, what="x", sleep=clock.sleep, clock=clock.time)
    assert clock.now == pytest.approx(60)


def test_retry_does_not_retry_a_bug() -> None:
    clock = FakeClock()
    bug = IntegrityError("INSERT", {}, Exception("duplicate key"))
    with pytest.raises(IntegrityError):
        retry_db(outage(1, bug), budget_s=60, what="x", sleep=clock.sleep, clock=clock.time)
    assert clock.now == 0


def test_a_job_is_retried_through_an_outage_of_its_dependencies_not_failed() -> None:
    import requests
    from botocore.exceptions import EndpointConnectionError
    from trainer.retry import is_outage, retry_outage

    def http_error(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(f"{status}", response=response)

    # MLflow answering 401 while its user database is down, S3 away, a connection refused.
    outages = [
        http_error(401),
        EndpointConnectionError(endpoint_url="http://s3"),
        ConnectionError(),
    ]
    calls: list[int] = []
    slept: list[float] = []

    def run() -> str:
        calls.append(1)
        if len(calls) <= len(outages):
            raise outages[len(calls) - 1]
        return "trained"

    assert retry_outage(run, budget_s=60, what="job", sleep=slept.append) == "trained"
    assert slept == [2.0, 4.0, 8.0]
    # The job's own faults are not outages: they fail at once.
    assert not is_outage(ValueError("bad column"))
    assert not is_outage(http_error(400))


def test_an_outage_longer_than_the_budget_fails_the_job() -> None:
    from trainer.retry import retry_outage

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def run() -> str:
        raise ConnectionError("MLflow is down")

    with pytest.raises(ConnectionError):
        retry_outage(run, budget_s=20, what="job", sleep=sleep, clock=lambda: now[0])
    assert now[0] == pytest.approx(20.0)
