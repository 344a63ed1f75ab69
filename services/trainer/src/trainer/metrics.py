"""The trainer's own Prometheus metrics, registered on the app's registry next to the HTTP ones."""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter

Outcome = Literal["created", "duplicate", "rejected"]
OUTCOMES: tuple[Outcome, ...] = ("created", "duplicate", "rejected")


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs_submitted = Counter(
            "trainer_jobs_submitted_total",
            "POST /v1/train requests by outcome: created (job queued), duplicate (idempotency "
            "key replayed), rejected (refused with a 4xx: invalid body, unknown algorithm or "
            "params, idempotency conflict)",
            ("outcome",),
            registry=registry,
        )
        # Children made up front are exported as 0, so rate() works before the first rejection.
        self._submitted = {o: self.jobs_submitted.labels(o) for o in OUTCOMES}

    def job_submitted(self, outcome: Outcome) -> None:
        self._submitted[outcome].inc()
