"""The outbox dispatcher: recorded jobs reach the broker once it answers, and again when it lost
them; a broker outage costs one log line, not one per attempt."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from mlops_common.http import wait_until
from trainer import dispatch
from trainer.dispatch import Dispatcher, next_backoff
from trainer.jobs import JobStore

from .conftest import WAIT_S, FakeQueue


def jobs(store: JobStore, count: int) -> list[str]:
    return [store.create("m", {"x": i}, None)[0].id for i in range(count)]


def test_a_pass_sends_every_pending_job_in_batches(store: JobStore, queue: FakeQueue) -> None:
    ids = jobs(store, 5)
    assert Dispatcher(store, queue, batch_size=2).run_once() == ids
    assert queue.sent == ids and store.pending_count() == 0


def test_a_broker_that_lost_its_data_gets_every_queued_job_again(
    store: JobStore, queue: FakeQueue
) -> None:
    dispatcher = Dispatcher(store, queue)
    waiting = jobs(store, 2)
    running = jobs(store, 1)[0]
    assert dispatcher.run_once() == [*waiting, running]
    store.claim(running, "w")
    # Back from a freeze with its data: nothing is sent twice.
    assert dispatcher.run_once() == []
    queue.lose_everything()
    assert dispatcher.run_once() == waiting
    assert queue.sent == waiting


def test_a_broker_that_lost_its_latest_writes_is_noticed(store: JobStore, queue: FakeQueue) -> None:
    dispatcher = Dispatcher(store, queue)
    dispatcher.run_once()
    kept = dict(queue.marks)
    first = jobs(store, 1)
    assert dispatcher.run_once() == first
    # An append-only file that missed its last second: the message and the newer marker.
    queue.lose_everything()
    queue.marks.update(kept)
    assert dispatcher.run_once() == first


def test_backoff_doubles_from_half_a_second_to_five() -> None:
    delays = [0.0]
    for _ in range(6):
        delays.append(next_backoff(delays[-1]))
    assert delays[1:] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


class CountingQueue(FakeQueue):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def enqueue(self, job_id: str) -> None:
        self.attempts += 1
        super().enqueue(job_id)


def test_an_outage_is_logged_once_and_its_jobs_sent_after_it(
    store: JobStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "BACKOFF_START_S", 0.01)
    monkeypatch.setattr(dispatch, "BACKOFF_MAX_S", 0.02)
    queue = CountingQueue()
    queue.down = True
    ids = jobs(store, 2)
    dispatcher = Dispatcher(store, queue)
    with caplog.at_level(logging.INFO, logger="trainer.dispatch"):
        dispatcher.start()
        try:
            assert wait_until(lambda: queue.attempts >= 5, WAIT_S, 0.01)
            queue.down = False
            assert queue.wait_until(lambda sent: sent == ids)
            assert wait_until(lambda: len(caplog.records) == 2, WAIT_S, 0.01)
        finally:
            dispatcher.stop()
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "stay pending" in caplog.records[0].getMessage()
    assert "again" in caplog.records[1].getMessage()


def test_a_new_job_is_sent_at_once_not_at_the_next_poll(store: JobStore, queue: FakeQueue) -> None:
    dispatcher = Dispatcher(store, queue, interval_s=3600)
    dispatcher.start()
    try:
        assert wait_until(lambda: bool(queue.marks), WAIT_S, 0.01)  # the first pass is done
        job = jobs(store, 1)
        dispatcher.wake()
        assert queue.wait_until(lambda sent: sent == job)
    finally:
        dispatcher.stop()


def test_stopping_does_not_wait_out_a_backoff(
    store: JobStore, queue: FakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "BACKOFF_START_S", 3600.0)
    queue.down = True
    failed = threading.Event()
    monkeypatch.setattr(Dispatcher, "_failed", lambda self, exc, delay: failed.set())
    dispatcher = Dispatcher(store, queue)
    dispatcher.start()
    assert failed.wait(WAIT_S)
    began = time.monotonic()
    dispatcher.stop()
    assert time.monotonic() - began < 1.0
    assert dispatcher._thread is not None and not dispatcher._thread.is_alive()
