"""The outbox dispatcher: hands the jobs recorded in PostgreSQL to the broker, from a thread.

``POST /v1/train`` only inserts the job (``dispatched_at`` NULL) and wakes the dispatcher, so a
broker that is down or frozen delays jobs but never a request. The dispatcher's thread sends
pending jobs oldest first and marks them dispatched; when the broker (or the database) fails it
logs once, backs off from 0.5 s doubling to 5 s, and the jobs stay pending until it is back.

A broker that restarts without its data (no persistence, a failover, a flush) loses the messages
it held. After each pass the dispatcher writes a marker key on the broker, after the messages it
sent; when the marker is gone, or holds an older value than the last one written, the broker lost
writes, and every queued job is sent again. Redis's ``run_id`` would only say that the server
restarted, and the trainer's ACL user may not run INFO anyway; the marker sees data lost without a
restart too, and no loss when an append-only file kept everything. A duplicate message is
harmless: only one delivery can claim a job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from mlops_common.errors import is_database_outage

from trainer.jobs import JobStore
from trainer.queue import JobQueue

log = logging.getLogger(__name__)

BATCH_SIZE = 100
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 5.0
# A replica's marker outlives any outage worth noticing, and expires once the replica is gone.
MARK_TTL_S = 24 * 3600


def send_pending(store: JobStore, queue: JobQueue, batch_size: int = BATCH_SIZE) -> list[str]:
    """Send every pending job, a batch at a time; raises on the first failure (the jobs sent
    before it are marked dispatched, the others stay pending)."""
    sent: list[str] = []
    while True:
        batch = store.dispatch(queue.enqueue, batch_size)
        sent += batch
        if len(batch) < batch_size:
            return sent


def next_backoff(delay_s: float) -> float:
    """0.5 s after the first failure, then doubling up to 5 s."""
    return min(BACKOFF_MAX_S, delay_s * 2) if delay_s else BACKOFF_START_S


def describe(exc: BaseException) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


class Dispatcher:
    """Sends pending jobs from a daemon thread; ``wake()`` (any thread) asks for a pass now."""

    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        *,
        interval_s: float = 2.0,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.store = store
        self.queue = queue
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.mark_key = f"trainer:dispatcher:{uuid.uuid4().hex}"
        self._marks = 0
        self._expected_mark: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainer-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current pass (broker calls are bounded, so it ends)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run_once(self) -> list[str]:
        """One pass, blocking: notice lost broker data, send every pending job, leave a marker.

        Raises when the broker or the database fails; the jobs not sent stay pending.
        """
        self._check_mark()
        sent = send_pending(self.store, self.queue, self.batch_size)
        self._leave_mark()
        return sent

    def _check_mark(self) -> None:
        if self._expected_mark is None:
            return  # nothing written yet: the start-up resend covers what came before
        found = self.queue.read_mark(self.mark_key)
        if found == self._expected_mark:
            return
        resent = self.store.resend_queued()
        log.warning(
            "the broker lost messages (its marker is %s, %s was written; restarted without its "
            "data?): sending the %d queued jobs again",
            "gone" if found is None else repr(found),
            repr(self._expected_mark),
            resent,
        )

    def _leave_mark(self) -> None:
        # Written after the messages, so a broker that lost them lost the marker too.
        self._marks += 1
        value = str(self._marks)
        self.queue.write_mark(self.mark_key, value, MARK_TTL_S)
        self._expected_mark = value

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            # Cleared before the pass: a wake during it (a job just recorded) makes another.
            self._wake.clear()
            try:
                sent = self.run_once()
            except Exception as exc:
                delay = next_backoff(delay)
                self._failed(exc, delay)
                # Wakes are ignored while backing off: a submission must not hammer the broker.
                self._stop.wait(delay)
                continue
            delay = 0.0
            self._recovered(sent)
            self._wake.wait(self.interval_s)

    def _failed(self, exc: Exception, delay_s: float) -> None:
        if self._failing_since is not None:
            log.debug(
                "dispatching jobs failed again (%s); next try in %.1f s", describe(exc), delay_s
            )
            return
        self._failing_since = time.monotonic()
        log.warning(
            "cannot dispatch jobs, %s failed (%s): new jobs stay pending in the database; "
            "retrying with backoff up to %.0f s, logged again once it works",
            "the database" if is_database_outage(exc) else "the broker",
            describe(exc),
            BACKOFF_MAX_S,
        )

    def _recovered(self, sent: list[str]) -> None:
        if self._failing_since is None:
            return
        outage = time.monotonic() - self._failing_since
        self._failing_since = None
        log.info("jobs are dispatched again after %.1f s: sent %d pending", outage, len(sent))
