"""Every broker call is bounded: a frozen broker (SIGSTOP, a stalled network) fails a call after
TRAINER_BROKER_TIMEOUT_S instead of hanging it."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from trainer.queue import CeleryQueue
from trainer.settings import TrainerSettings


@pytest.fixture
def frozen_broker() -> Iterator[str]:
    """What a SIGSTOPped Redis looks like: the kernel accepts connections, nobody answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


@pytest.fixture
def queue(settings: TrainerSettings, frozen_broker: str) -> Iterator[CeleryQueue]:
    bounded = settings.model_copy(update={"broker_url": frozen_broker, "broker_timeout_s": 0.5})
    queue = CeleryQueue.from_settings(bounded)
    yield queue
    queue.close()


CALLS: dict[str, Callable[[CeleryQueue], object]] = {
    "enqueue": lambda q: q.enqueue("job"),
    "ping": lambda q: q.ping(),
    "read_mark": lambda q: q.read_mark("trainer:dispatcher:x"),
    "write_mark": lambda q: q.write_mark("trainer:dispatcher:x", "1", 60),
    "workers": lambda q: q.workers(0.1),
}


def error_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """The error ``call()`` raised; fails the test (without waiting for it) if it is still
    running after ``seconds``."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting on the broker after {seconds} s"
    return errors[0] if errors else None


@pytest.mark.parametrize("call", CALLS)
def test_a_frozen_broker_fails_each_call_in_bounded_time(queue: CeleryQueue, call: str) -> None:
    began = time.monotonic()
    error = error_within(3.0, lambda: CALLS[call](queue))
    took = time.monotonic() - began
    assert error is not None and re.search("(?i)timeout|timed out", str(error)), error
    assert took >= 0.4, "failed before the timeout: not the frozen broker that was tested"
