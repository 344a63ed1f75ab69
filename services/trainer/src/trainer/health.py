"""``GET /health``: which dependency is degraded, answered in time whatever the dependencies do.

The database, the broker and the workers are probed concurrently, each in a thread, and the
answer is given after ``TRAINER_HEALTH_TIMEOUT_S`` at the latest, naming a probe that did not
finish as ``timeout``. Each probe runs once at a time: a check that finds one under way waits for
it instead of starting another, so a frozen dependency holds one thread per dependency however
often the endpoint is polled (and the broker and database calls are bounded anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from trainer.jobs import JobStore
from trainer.queue import JobQueue
from trainer.schemas import HealthView, Probe

T = TypeVar("T")

# The worker ping waits for replies until its own timeout: this share of the deadline leaves the
# rest for publishing it and collecting the answers.
WORKER_PING_SHARE = 0.6


class SingleFlight(Generic[T]):
    """A blocking call run in a thread, one at a time; concurrent callers share the one under way."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._running: asyncio.Future[T] | None = None

    async def __call__(self, timeout_s: float) -> T:
        """The call's result; TimeoutError when it takes longer (it goes on, and is shared)."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self._call))
            # Read the outcome even when every caller gave up on it (no "never retrieved").
            self._running.add_done_callback(_consume)
        return await asyncio.wait_for(asyncio.shield(self._running), timeout_s)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class Outcome(Generic[T]):
    state: Probe
    value: T | None = None
    problem: str | None = None


async def probe(call: SingleFlight[T], timeout_s: float) -> Outcome[T]:
    try:
        return Outcome("ok", await call(timeout_s))
    except TimeoutError:
        return Outcome("timeout", problem=f"no answer within {timeout_s:g} s")
    except Exception as exc:
        # The type only: /health is open to anyone, and the message may name hosts.
        return Outcome("unavailable", problem=type(exc).__name__)


class HealthCheck:
    def __init__(self, store: JobStore, queue: JobQueue, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._database = SingleFlight(store.pending_count)
        self._broker = SingleFlight(queue.ping)
        ping_s = timeout_s * WORKER_PING_SHARE
        self._workers = SingleFlight(lambda: queue.workers(ping_s))

    async def run(self) -> tuple[HealthView, int]:
        """The health view and its status code: 503 when the database is not ok."""
        database, broker, workers = await asyncio.gather(
            probe(self._database, self.timeout_s),
            probe(self._broker, self.timeout_s),
            probe(self._workers, self.timeout_s),
        )
        degraded = problems(database, broker, workers)
        status: Literal["ok", "degraded", "unavailable"] = "ok"
        if database.state != "ok":
            status = "unavailable"
        elif degraded:
            status = "degraded"
        view = HealthView(
            status=status,
            database=database.state,
            broker=broker.state,
            workers=workers.value or [],
            pending_dispatch=database.value,
            degraded=degraded,
        )
        return view, 503 if status == "unavailable" else 200


def problems(
    database: Outcome[int], broker: Outcome[None], workers: Outcome[list[str]]
) -> list[str]:
    """One line per dependency that is not ok, saying what it costs."""
    lines = []
    if database.state != "ok":
        lines.append(f"database: {database.state} ({database.problem}); no job can be accepted")
    if broker.state != "ok":
        lines.append(
            f"broker: {broker.state} ({broker.problem}); jobs are accepted and kept, and sent "
            "once it answers"
        )
    if workers.state != "ok":
        lines.append(f"workers: {workers.state} ({workers.problem})")
    elif not workers.value:
        lines.append("workers: none answered; queued jobs wait for one")
    return lines
