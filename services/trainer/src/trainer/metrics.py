"""The trainer's own Prometheus metrics, registered on the app's registry next to the HTTP ones."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Outcome = Literal["created", "duplicate", "rejected"]
OUTCOMES: tuple[Outcome, ...] = ("created", "duplicate", "rejected")


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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


class MonitoringGauges(Collector):
    """The newest monitoring result of each model (``trainer.monitor``) as gauges.

    Read from the jobs table, so every API replica exports the same figures whichever worker
    ran the job; cached ``ttl_s`` so a scrape costs at most one query. Without the database the
    last figures read are exported again (their timestamp gauge tells how old they are).
    """

    def __init__(
        self,
        latest: Callable[[], Sequence[Any]],
        ttl_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._latest = latest
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: Sequence[Any] = ()
        self._read_at: float | None = None

    def _jobs_now(self) -> Sequence[Any]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._ttl_s:
                try:
                    self._jobs = self._latest()
                except Exception as exc:
                    log.warning("monitoring gauges: cannot read the results (%s)", exc)
                self._read_at = now
            return self._jobs

    def describe(self) -> Iterator[Metric]:
        # No query at registration time.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        share = GaugeMetricFamily(
            "mlops_monitor_drift_share",
            "Share of the served version's features that drifted from its training data, in "
            "the newest monitoring job's window",
            labels=["model", "version"],
        )
        drifted = GaugeMetricFamily(
            "mlops_monitor_drifted_features",
            "Features that drifted, in the newest monitoring job's window",
            labels=["model", "version"],
        )
        score = GaugeMetricFamily(
            "mlops_monitor_feature_drift_score",
            "Each feature's drift test score (a p-value, or a distance: see the method label)",
            labels=["model", "version", "feature", "method"],
        )
        rows = GaugeMetricFamily(
            "mlops_monitor_window_rows",
            "Logged rows in the newest monitoring job's window",
            labels=["model"],
        )
        live = GaugeMetricFamily(
            "mlops_monitor_live_quality",
            "Live metric of a version from the labels sent back (accuracy, or RMSE)",
            labels=["model", "version", "metric"],
        )
        drop = GaugeMetricFamily(
            "mlops_monitor_quality_drop",
            "How much worse the served version is live than on its holdout (relative)",
            labels=["model", "version", "metric"],
        )
        retrain = GaugeMetricFamily(
            "mlops_monitor_retrain",
            "1 when the newest monitoring job asked for retraining",
            labels=["model", "version"],
        )
        finished = GaugeMetricFamily(
            "mlops_monitor_last_run_timestamp_seconds",
            "When the newest monitoring job of the model finished (Unix time)",
            labels=["model"],
        )
        for job in self._jobs_now():
            result = job.result or {}
            model, version = job.model_name, str(result.get("version", ""))
            rows.add_metric([model], float(result.get("rows", 0)))
            if job.finished_at is not None:
                finished.add_metric([model], job.finished_at.timestamp())
            decision = result.get("decision") or {}
            retrain.add_metric([model, version], 1.0 if decision.get("retrain") else 0.0)
            found = result.get("drift")
            if found:
                share.add_metric([model, version], float(found["share"]))
                drifted.add_metric([model, version], float(found["drifted"]))
                for feature, test in (found.get("features") or {}).items():
                    score.add_metric([model, version, feature, test["method"]], test["score"])
            for quality in result.get("quality") or []:
                labels = [model, str(quality["version"]), quality["metric"]]
                live.add_metric(labels, float(quality["live"]))
                if quality.get("drop") is not None:
                    drop.add_metric(labels, float(quality["drop"]))
        yield from (share, drifted, score, rows, live, drop, retrain, finished)
