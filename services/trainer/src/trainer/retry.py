"""Riding out a short database outage: a write retried while the database cannot be used.

A worker that finishes a job during a PostgreSQL restart must still record the outcome; without
retries the job would stay ``running`` until the stale-heartbeat recovery requeued it (and ran it
again). Only errors that say the database is unavailable are retried (``is_database_outage``);
any other error is a bug and propagates at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from mlops_common.errors import is_database_outage

T = TypeVar("T")

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0


def retry_db(
    call: Callable[[], T],
    *,
    budget_s: float,
    what: str,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, tried again while the database is unavailable, for up to ``budget_s``.

    Waits 0.5 s, doubling to 5 s, between tries. Logs once when it starts retrying and once when
    it gets through; the last error propagates once the budget is spent.
    """
    deadline = clock() + budget_s
    delay = FIRST_DELAY_S
    failures = 0
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            left = deadline - clock()
            if left <= 0:
                log.error(
                    "%s: the database is still unavailable after %.0f s; giving up", what, budget_s
                )
                raise
            if not failures:
                log.warning(
                    "%s: the database is unavailable (%s); retrying for up to %.0f s",
                    what,
                    type(exc).__name__,
                    budget_s,
                )
            failures += 1
            sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if failures:
            log.info("%s: done after %d retries", what, failures)
        return result
