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


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a dependency was unavailable, not that the job
    is wrong: connection and timeout errors, 5xx and 429 answers, and an MLflow behind
    basic auth refusing (401/403) while its own database is down. A job's own faults are
    ``JobFailed`` and never reach here."""
    import httpx
    import requests
    from botocore.exceptions import BotoCoreError, ClientError
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_database_outage(current) or isinstance(
            current, (ConnectionError, TimeoutError, httpx.TransportError, BotoCoreError)
        ):
            return True
        response = getattr(current, "response", None)
        # MLflow's basic auth refuses everyone while its user database is down.
        if (
            isinstance(current, requests.HTTPError)
            and response is not None
            and _unavailable_status(response.status_code, auth_too=True)
        ):
            return True
        if isinstance(current, requests.RequestException) and not isinstance(
            current, requests.HTTPError
        ):
            return True
        if isinstance(current, httpx.HTTPStatusError) and _unavailable_status(
            current.response.status_code
        ):
            return True
        if isinstance(current, ClientError) and _unavailable_status(
            int(current.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        ):
            return True
        if isinstance(current, MlflowException) and _unavailable_status(
            int(current.get_http_status_code())  # type: ignore[no-untyped-call]
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_outage(
    call: Callable[[], T],
    *,
    budget_s: float,
    what: str,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, tried again while it fails because a dependency is unavailable (``is_outage``),
    for up to ``budget_s``: 2 s doubling to 30 s between tries. Anything else propagates at once;
    the last outage error propagates once the budget is spent."""
    deadline = clock() + budget_s
    delay = 2.0
    while True:
        try:
            return call()
        except Exception as exc:
            left = deadline - clock()
            if not is_outage(exc) or left <= 0:
                raise
            log.warning(
                "%s: a dependency is unavailable (%s: %s); trying again in %.0f s",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
                min(delay, left),
            )
            sleep(min(delay, left))
            delay = min(delay * 2, 30.0)


def _unavailable_status(status: int, *, auth_too: bool = False) -> bool:
    return status >= 500 or status == 429 or (auth_too and status in (401, 403))
