"""Training jobs in PostgreSQL: the source of truth for a job's state, whatever the queue does.

The table is also the outbox towards the broker: a queued job with no ``dispatched_at`` still has
to be sent (see ``trainer.dispatch``), so recording a job never waits for the broker.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Engine,
    Index,
    Integer,
    Select,
    String,
    Text,
    and_,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

# The API and the workers both migrate this schema at start (whichever comes first).
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_trainer"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WorkerIdentity:
    """Who runs a job: ``trainer@<host>/<worker pid>.<incarnation>/<process pid>``.

    Unique per process, so several workers on one host (or a worker's pool processes) never take
    each other for gone. The worker's main pid and a random incarnation tell a previous run of
    a restarted worker (same host, and the same pid once a container restarts) from a live
    neighbour.
    """

    host: str
    worker_pid: int
    incarnation: str
    pid: int

    @classmethod
    def current(cls, worker_pid: int, incarnation: str) -> WorkerIdentity:
        return cls(socket.gethostname(), worker_pid, incarnation, os.getpid())

    def __str__(self) -> str:
        return f"trainer@{self.host}/{self.worker_pid}.{self.incarnation}/{self.pid}"

    @classmethod
    def parse(cls, name: str) -> WorkerIdentity | None:
        try:
            host, worker, pid = name.removeprefix("trainer@").split("/")
            worker_pid, incarnation = worker.split(".")
            return cls(host, int(worker_pid), incarnation, int(pid))
        except ValueError:
            return None

    def knows_gone(self, owner: str | None, alive: Callable[[int], bool]) -> bool:
        """Whether ``owner`` (a job's worker) is certainly gone, as seen from this worker.

        Only a worker on this host can tell; elsewhere the heartbeat decides. A name of the
        older form (``trainer@<host>``) on this host is a worker from before an upgrade.
        """
        if owner is None:
            return False
        if owner == f"trainer@{self.host}":
            return True
        theirs = WorkerIdentity.parse(owner)
        if theirs is None or theirs.host != self.host or theirs.incarnation == self.incarnation:
            return False
        # Our own main pid under another incarnation: we replaced it (a restarted container).
        return theirs.worker_pid == self.worker_pid or not alive(theirs.worker_pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # "train" or "monitor" (trainer.monitor): both run on the workers, through the same outbox.
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    run_id: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[int | None] = mapped_column(Integer)
    task: Mapped[str | None] = mapped_column(String(32))
    algorithm: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, float] | None] = mapped_column(JSON)
    promoted: Mapped[bool | None] = mapped_column(Boolean)
    promotion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the job was last handed to the broker; NULL while a queued job waits to be sent.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "ix_training_jobs_pending_dispatch",
            "created_at",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
            sqlite_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
    )


def pending_dispatch() -> ColumnElement[bool]:
    """Queued jobs not handed to the broker yet (what the partial index holds)."""
    return and_(Job.status == "queued", Job.dispatched_at.is_(None))


SKIP_LOCKED_DIALECTS = frozenset({"postgresql", "mysql", "oracle"})


def pending_query(dialect: str, limit: int) -> Select[str]:
    """The oldest pending jobs, locked so that concurrent dispatchers (API replicas) send
    disjoint batches: ``FOR UPDATE SKIP LOCKED`` where the database has it. SQLite has no row
    locks (one writer at a time); there two dispatchers may send a job twice, which is harmless.
    """
    query = select(Job.id).where(pending_dispatch()).order_by(Job.created_at).limit(limit)
    if dialect in SKIP_LOCKED_DIALECTS:
        query = query.with_for_update(skip_locked=True)
    return query


class IdempotencyConflict(Exception):
    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def create(
        self, model_name: str, request: dict[str, Any], key: str | None, kind: str = "train"
    ) -> tuple[Job, bool]:
        """Insert a queued job; with a known idempotency key return the existing one (created=False).

        A key reused with a different request raises IdempotencyConflict.
        """
        job = Job(
            id=str(uuid.uuid4()),
            idempotency_key=key,
            model_name=model_name,
            request=request,
            kind=kind,
            status="queued",
            attempts=0,
            created_at=utcnow(),
        )
        with self.sessions() as session:
            session.add(job)
            try:
                session.commit()
                return job, True
            except IntegrityError:
                session.rollback()
        existing = self.by_key(key) if key else None
        if existing is None:
            raise RuntimeError("job insert failed without an idempotency conflict")
        if existing.request != request:
            raise IdempotencyConflict(existing)
        return existing, False

    def by_key(self, key: str) -> Job | None:
        with self.sessions() as session:
            return session.scalars(select(Job).where(Job.idempotency_key == key)).first()

    def get(self, job_id: str) -> Job | None:
        with self.sessions() as session:
            return session.get(Job, job_id)

    def claim(self, job_id: str, worker: str) -> Job | None:
        """Atomically move a queued job to running; None when another delivery got it first."""
        now = utcnow()
        with self.sessions() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    worker=worker,
                    attempts=Job.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                    error=None,
                )
            )
            session.commit()
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return session.get(Job, job_id)

    def heartbeat(self, job_id: str) -> None:
        self._update(job_id, heartbeat_at=utcnow())

    def succeed(self, job_id: str, worker: str, **values: Any) -> bool:
        """Record the outcome of the attempt ``worker`` runs; False when it no longer owns the job
        (it was taken for gone and requeued meanwhile: the attempt that owns it reports)."""
        return self._finish(job_id, worker, status="succeeded", **values)

    def fail(self, job_id: str, worker: str, error: str) -> bool:
        return self._finish(job_id, worker, status="failed", error=error[:4000])

    def _finish(self, job_id: str, worker: str, **values: Any) -> bool:
        with self.sessions() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
                .values(finished_at=utcnow(), **values)
            )
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _update(self, job_id: str, **values: Any) -> None:
        with self.sessions() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
            session.commit()

    def dispatch(self, send: Callable[[str], None], limit: int = 100) -> list[str]:
        """Hand up to ``limit`` pending jobs to ``send``, oldest first, and mark them dispatched.

        The rows stay locked until they are marked, so another dispatcher skips them. When
        ``send`` raises, the jobs it took before are marked, the rest stay pending, and the
        exception propagates. Returns the ids sent.
        """
        sent: list[str] = []
        with self.sessions() as session:
            query = pending_query(self.engine.dialect.name, limit)
            try:
                for job_id in session.scalars(query).all():
                    send(job_id)
                    sent.append(job_id)
            finally:
                # Nothing sent: closing the session rolls back and releases the locks.
                if sent:
                    session.execute(
                        update(Job).where(Job.id.in_(sent)).values(dispatched_at=utcnow())
                    )
                    session.commit()
        return sent

    def pending_count(self) -> int:
        """Queued jobs the broker has not been handed yet."""
        query = select(func.count()).select_from(Job).where(pending_dispatch())
        with self.sessions() as session:
            return int(session.scalar(query) or 0)

    def resend_queued(self) -> int:
        """Make every queued job pending again (the broker may have lost their messages)."""
        with self.sessions() as session:
            result = session.execute(
                update(Job)
                .where(Job.status == "queued", Job.dispatched_at.is_not(None))
                .values(dispatched_at=None)
            )
            session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    def recent(
        self,
        model_name: str | None,
        status: str | None,
        limit: int,
        model_like: str | None = None,
        kind: str | None = None,
    ) -> list[Job]:
        """Newest first; ``model_like`` (a SQL LIKE pattern, ``\\`` escapes) limits the names."""
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if kind:
            query = query.where(Job.kind == kind)
        if model_name:
            query = query.where(Job.model_name == model_name)
        if model_like is not None:
            query = query.where(Job.model_name.like(model_like, escape="\\"))
        if status:
            query = query.where(Job.status == status)
        with self.sessions() as session:
            return list(session.scalars(query))

    def latest_monitoring(self, scan: int = 500) -> list[Job]:
        """The newest succeeded monitoring job of each model (among the last ``scan``)."""
        query = (
            select(Job)
            .where(Job.kind == "monitor", Job.status == "succeeded")
            .order_by(Job.finished_at.desc())
            .limit(scan)
        )
        with self.sessions() as session:
            jobs = list(session.scalars(query))
        newest: dict[str, Job] = {}
        for job in jobs:
            newest.setdefault(job.model_name, job)
        return list(newest.values())

    def active_count(self) -> int:
        """Jobs queued or running: what the workers still have to do."""
        query = select(func.count()).select_from(Job).where(Job.status.in_(("queued", "running")))
        with self.sessions() as session:
            return int(session.scalar(query) or 0)

    def recover_orphans(
        self,
        stale_after_s: float,
        max_attempts: int,
        gone: Callable[[str | None], bool] = lambda _worker: False,
    ) -> tuple[list[str], list[str]]:
        """Running jobs whose worker is gone: requeue them, or fail them when out of attempts.

        A worker is gone when its heartbeat is stale, or when ``gone`` knows it is (a restarted
        worker recognising its previous run). A requeued job is pending dispatch again: the
        dispatcher sends it. Returns (requeued ids, failed ids).
        """
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        requeued: list[str] = []
        failed: list[str] = []
        with self.sessions() as session:
            query = select(Job).where(Job.status == "running").with_for_update(skip_locked=True)
            for job in session.scalars(query):
                heartbeat = job.heartbeat_at
                if heartbeat is not None and heartbeat.tzinfo is None:
                    heartbeat = heartbeat.replace(tzinfo=UTC)
                lost = gone(job.worker) or heartbeat is None or heartbeat < cutoff
                if not lost:
                    continue
                reason = f"worker {job.worker} stopped while running attempt {job.attempts}"
                if job.attempts < max_attempts:
                    job.status, job.error = "queued", f"{reason}; retrying"
                    job.dispatched_at = None
                    requeued.append(job.id)
                else:
                    job.status, job.error = "failed", f"{reason} of {max_attempts}; giving up"
                    job.finished_at = utcnow()
                    failed.append(job.id)
            session.commit()
        return requeued, failed
