from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.dialects import postgresql, sqlite
from trainer.jobs import (
    MIGRATIONS,
    VERSION_TABLE,
    Job,
    JobStore,
    WorkerIdentity,
    pending_query,
    utcnow,
)
from trainer.queue import recover_jobs
from trainer.settings import TrainerSettings


def test_only_one_delivery_claims_a_job(store: JobStore) -> None:
    job, _ = store.create("m", {"x": 1}, None)
    claimed = store.claim(job.id, "w1")
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert store.claim(job.id, "w2") is None


def test_a_restarted_worker_requeues_what_it_was_running(store: JobStore) -> None:
    job, _ = store.create("m", {"x": 1}, None)
    before = WorkerIdentity("host", 7, "aaaa1111", 12)
    store.claim(job.id, str(before))
    # The restarted container: same host, same main pid, another incarnation.
    after = WorkerIdentity("host", 7, "bbbb2222", 13)
    gone = partial(after.knows_gone, alive=lambda _pid: True)
    requeued, failed = store.recover_orphans(3600, max_attempts=2, gone=gone)
    assert (requeued, failed) == ([job.id], [])
    again = store.get(job.id)
    assert again is not None and again.status == "queued"
    assert "stopped while running attempt 1" in (again.error or "")


def test_a_job_out_of_attempts_is_failed_with_a_reason(store: JobStore) -> None:
    job, _ = store.create("m", {"x": 1}, None)
    store.claim(job.id, "w")
    store.recover_orphans(3600, max_attempts=2, gone=lambda owner: owner == "w")
    store.claim(job.id, "w")
    requeued, failed = store.recover_orphans(3600, max_attempts=2, gone=lambda owner: owner == "w")
    assert (requeued, failed) == ([], [job.id])
    final = store.get(job.id)
    assert final is not None and final.status == "failed" and "giving up" in (final.error or "")


def test_a_worker_never_takes_a_live_neighbours_jobs_for_its_own() -> None:
    me = WorkerIdentity("host", 100, "mine0000", 101)
    neighbour = str(WorkerIdentity("host", 200, "next0000", 201))
    alive = {100, 200}.__contains__
    assert not me.knows_gone(neighbour, alive)  # a second worker on the same host
    assert not me.knows_gone(str(WorkerIdentity("host", 100, "mine0000", 102)), alive)  # my pool
    assert not me.knows_gone(str(WorkerIdentity("other", 200, "x", 1)), alive)  # heartbeat decides
    assert me.knows_gone(str(WorkerIdentity("host", 300, "gone0000", 301)), alive)  # pid is dead
    assert me.knows_gone("trainer@host", alive)  # a worker from before the upgrade
    assert WorkerIdentity.parse(neighbour) == WorkerIdentity("host", 200, "next0000", 201)


def test_only_the_attempt_that_owns_a_job_records_its_outcome(store: JobStore) -> None:
    """An attempt taken for lost (and requeued) that finishes late changes nothing."""
    job, _ = store.create("m", {"x": 1}, None)
    store.claim(job.id, "first")
    store.recover_orphans(3600, max_attempts=3, gone=lambda owner: owner == "first")
    store.claim(job.id, "second")
    assert not store.succeed(job.id, "first", model_version=1)
    assert not store.fail(job.id, "first", "late")
    assert store.succeed(job.id, "second", model_version=2)
    final = store.get(job.id)
    assert final is not None and (final.status, final.model_version) == ("succeeded", 2)
    assert not store.fail(job.id, "second", "twice")


def test_live_jobs_are_left_alone_and_stale_ones_recovered(store: JobStore) -> None:
    live, _ = store.create("m", {"x": 1}, None)
    stale, _ = store.create("m", {"x": 2}, None)
    store.claim(live.id, "a")
    store.claim(stale.id, "b")
    with store.sessions() as session:
        session.execute(
            update(Job)
            .where(Job.id == stale.id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=10))
        )
        session.commit()
    requeued, _ = store.recover_orphans(60, max_attempts=3)
    assert requeued == [stale.id]
    live_now = store.get(live.id)
    assert live_now is not None and live_now.status == "running"


def sent_by(store: JobStore) -> list[str]:
    sent: list[str] = []
    store.dispatch(sent.append)
    return sent


def test_recovery_makes_requeued_jobs_pending_and_at_start_every_queued_one(
    store: JobStore, settings: TrainerSettings
) -> None:
    waiting, _ = store.create("m", {"x": 1}, None)
    orphan, _ = store.create("m", {"x": 2}, None)
    assert sorted(sent_by(store)) == sorted([waiting.id, orphan.id])
    store.claim(orphan.id, "trainer@host")
    recover_jobs(store, settings, gone=lambda owner: owner == "trainer@host")
    assert sent_by(store) == [orphan.id]
    recover_jobs(store, settings, resend_queued=True)
    assert sorted(sent_by(store)) == sorted([waiting.id, orphan.id])


def test_dispatch_sends_oldest_first_and_only_once(store: JobStore) -> None:
    ids = [store.create("m", {"x": i}, None)[0].id for i in range(3)]
    claimed, _ = store.create("m", {"x": 3}, None)
    store.claim(claimed.id, "w")  # running: not the broker's business any more
    assert store.pending_count() == 3
    assert store.dispatch(lambda _job_id: None, limit=2) == ids[:2]
    assert sent_by(store) == ids[2:]
    assert sent_by(store) == []
    assert store.pending_count() == 0


def test_a_send_failure_keeps_the_jobs_not_sent_pending(store: JobStore) -> None:
    ids = [store.create("m", {"x": i}, None)[0].id for i in range(3)]
    sent: list[str] = []

    def send(job_id: str) -> None:
        if len(sent) == 1:
            raise ConnectionError("broker gone")
        sent.append(job_id)

    with pytest.raises(ConnectionError):
        store.dispatch(send)
    assert sent == ids[:1]
    assert sent_by(store) == ids[1:]


def test_replicas_lock_the_rows_they_send_where_the_database_can_skip_them() -> None:
    on_postgres = str(pending_query("postgresql", 10).compile(dialect=postgresql.dialect()))
    assert on_postgres.rstrip().endswith("FOR UPDATE SKIP LOCKED")
    on_sqlite = str(pending_query("sqlite", 10).compile(dialect=sqlite.dialect()))
    assert "FOR UPDATE" not in on_sqlite


def test_jobs_queued_before_the_outbox_migration_are_sent_after_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["sqlalchemy_url"] = url
    cfg.attributes["version_table"] = VERSION_TABLE
    command.upgrade(cfg, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO training_jobs (id, model_name, request, status, attempts, created_at)"
                " VALUES ('old', 'm', '{}', 'queued', 0, '2026-12-01 00:00:00')"
            )
        )
    command.upgrade(cfg, "head")
    indexes = {i["name"] for i in inspect(engine).get_indexes("training_jobs")}
    assert "ix_training_jobs_pending_dispatch" in indexes
    assert sent_by(JobStore(engine)) == ["old"]
    command.downgrade(cfg, "0001")
    assert "dispatched_at" not in {c["name"] for c in inspect(engine).get_columns("training_jobs")}
