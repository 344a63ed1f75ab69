"""Inference's own Prometheus metrics, beside the request counts every service has.

``InferenceMetrics`` is made first; the manager, handler and batcher get its ``model_event``,
``overloaded`` and ``batch_scored`` at construction, the prediction log's and the feedback's
sinks ``prediction_logged`` and ``feedback_stored``, and the app serves its registry.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from inference.manager import ModelManager
from inference.model import Prediction, ServedModel
from inference.sink import Outcome

BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_EVENTS = ("swapped", "rejected", "load_failed")
RECORD_OUTCOMES: tuple[Outcome, ...] = ("written", "dropped")
MIRROR_OUTCOMES = ("scored", "failed", "dropped", "skipped")
# Request latency of a variant, in seconds: sub-millisecond answers are the normal case here.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Distinct predicted classes counted per variant; more fall under "other" (a series each).
MAX_CLASS_SERIES = 50
OTHER_CLASS = "other"


class VariantSeries:
    """What one variant (alias) of the served model did, as plain numbers.

    A request adds to a few attributes (no lock, no label lookup: about a microsecond less than
    prometheus_client's own counters and histogram); ``_VariantCollector`` turns them into
    Prometheus series when /metrics is scraped. The mirror's thread updates only the mirror's
    series, the event loop the others.
    """

    __slots__ = (
        "alias",
        "buckets",
        "classes",
        "errors",
        "latency_sum",
        "manager",
        "ok",
        "prediction_sum",
        "rows",
    )

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.ok = 0
        self.errors = 0
        self.rows = 0
        self.latency_sum = 0.0
        # Per bucket of LATENCY_BUCKETS, then +Inf; made cumulative when scraped.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.classes: dict[Any, int] = {}
        self.prediction_sum = 0.0
        # Whose version is reported; None once the variant left the rollout.
        self.manager: ModelManager | None = None

    def served(self, latency_s: float, model: ServedModel, prediction: Prediction) -> None:
        self.ok += 1
        self.latency_sum += latency_s
        self.buckets[bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        predictions = prediction.predictions
        self.rows += len(predictions)
        if prediction.classes is None:
            # Regression: the sum, with the rows, gives the mean prediction over any window.
            self.prediction_sum += sum(v for v in predictions if v is not None and v == v)
            return
        classes = self.classes
        if len(predictions) == 1:
            label = predictions[0]
            if label in classes:
                classes[label] += 1
                return
            counts: Mapping[Any, int] = {label: 1}
        else:
            counts = Tally(predictions)
        for label, count in counts.items():
            if label not in classes and len(classes) >= MAX_CLASS_SERIES:
                label = OTHER_CLASS
            classes[label] = classes.get(label, 0) + count

    def failed(self) -> None:
        self.errors += 1

    def retire(self) -> None:
        """The variant left the rollout: its version is no longer reported."""
        self.manager = None


class _VariantCollector:
    """The variants' series, read from their ``VariantSeries`` at scrape time."""

    def __init__(self, series: Mapping[str, VariantSeries]) -> None:
        self._series = series

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        series = list(self._series.values())
        requests = CounterMetricFamily(
            "inference_variant_requests",
            "Requests per variant (the alias that answered, or the mirror): ok, or error (a "
            "variant other than champion failed rows champion then answered; or it broke)",
            labels=["variant", "outcome"],
        )
        latency = HistogramMetricFamily(
            "inference_variant_request_duration_seconds",
            "Time from the route starting to the variant's prediction being ready",
            labels=["variant"],
        )
        rows = CounterMetricFamily(
            "inference_variant_rows", "Rows a variant predicted", labels=["variant"]
        )
        classes = CounterMetricFamily(
            "inference_variant_predictions",
            "Classifiers: rows a variant predicted as each class (the prediction distribution; "
            f"past {MAX_CLASS_SERIES} classes, {OTHER_CLASS!r})",
            labels=["variant", "prediction"],
        )
        total = GaugeMetricFamily(
            "inference_variant_prediction_sum",
            "Regressors: the sum of a variant's predictions (over inference_variant_rows_total: "
            "their mean)",
            labels=["variant"],
        )
        version = GaugeMetricFamily(
            "inference_variant_version",
            "Version a variant serves (0: not loaded; its share goes to champion)",
            labels=["variant"],
        )
        for one in series:
            alias = one.alias
            requests.add_metric([alias, "ok"], one.ok)
            requests.add_metric([alias, "error"], one.errors)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), one.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
            latency.add_metric([alias], buckets, one.latency_sum)
            rows.add_metric([alias], one.rows)
            for label, count in list(one.classes.items()):
                classes.add_metric([alias, str(label)], count)
            if one.prediction_sum:
                total.add_metric([alias], one.prediction_sum)
            manager = one.manager
            if manager is not None:
                current = manager.current
                version.add_metric([alias], current.meta.version if current is not None else 0)
        yield from (requests, latency, rows, classes, total, version)


class HoldsRows(Protocol):
    """A buffer of records on their way to S3 (``RecordSink``, ``PredictionLog``)."""

    @property
    def held_rows(self) -> int: ...


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._events = Counter(
            "inference_model_events_total",
            "Model swaps, versions refused for what their artifacts ask for (rejected), and "
            "versions that failed to download, load or verify otherwise (load_failed)",
            ["event"],
            registry=self.registry,
        )
        for event in MODEL_EVENTS:
            self._events.labels(event)
        self._rejected = Counter(
            "inference_overload_rejections_total",
            "Requests answered 503 because the service was at capacity",
            registry=self.registry,
        )
        self._batch_requests = Histogram(
            "inference_batch_requests",
            "Requests sharing one batched model call",
            buckets=BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )
        self._batch_rows = Histogram(
            "inference_batch_rows",
            "Rows in one batched model call",
            buckets=BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )

        self._logged = Counter(
            "inference_prediction_log_records",
            "Rows of the prediction log written to S3, or dropped (the buffer was full, or S3 "
            "failed past the retries)",
            ["outcome"],
            registry=self.registry,
        )
        self._feedback = Counter(
            "inference_feedback_records",
            "Feedback labels accepted and then written to S3, or dropped (S3 failed past the "
            "retries)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in RECORD_OUTCOMES:
            self._logged.labels(outcome)
            self._feedback.labels(outcome)
        self._variants: dict[str, VariantSeries] = {}
        self.registry.register(_VariantCollector(self._variants))
        self._mirror = Counter(
            "inference_mirror_requests",
            "Copies of requests for the rollout's mirror: scored (answer logged), failed, "
            "dropped (its queue was full), skipped (the mirror was not loaded)",
            ["outcome"],
            registry=self.registry,
        )
        for mirrored in MIRROR_OUTCOMES:
            self._mirror.labels(mirrored)
        self._guard_trips = Counter(
            "inference_rollout_guard_trips",
            "Times this instance's rollout guard tripped on a variant (and asked the gateway to "
            "abort the rollout)",
            ["variant"],
            registry=self.registry,
        )
        self._writer_exits = Counter(
            "inference_prediction_log_writer_exits",
            "Times the prediction log's writer process ended unexpectedly (its rows counted "
            "dropped; another is started)",
            registry=self.registry,
        )

    def variant(self, alias: str, manager: ModelManager | None = None) -> VariantSeries:
        """The series of variant ``alias``, kept across rollouts (counters never go back),
        reporting the version ``manager`` serves."""
        series = self._variants.get(alias)
        if series is None:
            series = self._variants[alias] = VariantSeries(alias)
        series.manager = manager
        return series

    def mirrored(self, outcome: str) -> None:
        """One copy for the mirror ended as one of ``MIRROR_OUTCOMES``."""
        self._mirror.labels(outcome).inc()

    def guard_tripped(self, alias: str) -> None:
        self._guard_trips.labels(alias).inc()

    def prediction_logged(self, outcome: Outcome, rows: int) -> None:
        """Rows the prediction log wrote or dropped (its sink's ``on_outcome``)."""
        self._logged.labels(outcome).inc(rows)

    def prediction_writer_exited(self) -> None:
        """The prediction log's writer process died (``PredictionLog``'s ``on_writer_exit``)."""
        self._writer_exits.inc()

    def feedback_stored(self, outcome: Outcome, rows: int) -> None:
        """Labels the feedback sink wrote or dropped (its ``on_outcome``)."""
        self._feedback.labels(outcome).inc(rows)

    def watch_sinks(self, sinks: Mapping[str, HoldsRows]) -> None:
        """Report the rows each sink holds (``{"predictions": sink, "feedback": sink}``)."""
        held = Gauge(
            "inference_record_buffer_rows",
            "Rows held in memory for S3 (waiting, or in the file being written), per kind",
            ["kind"],
            registry=self.registry,
        )
        for kind, sink in sinks.items():
            held.labels(kind).set_function(_held_rows(sink))

    def model_event(self, event: str) -> None:
        """One of ``MODEL_EVENTS`` happened (``ModelManager``'s ``on_event``)."""
        self._events.labels(event).inc()

    def overloaded(self, _reason: str) -> None:
        """A request was turned away at capacity (``PredictionHandler``'s ``on_overload``)."""
        self._rejected.inc()

    def batch_scored(self, requests: int, rows: int) -> None:
        """One batched model call (``Batcher``'s ``on_batch``): how well batching works."""
        self._batch_requests.observe(requests)
        self._batch_rows.observe(rows)

    def watch(self, manager: ModelManager) -> None:
        """Report the version ``manager`` serves and whether it runs on the compiled path."""
        version = Gauge(
            "inference_model_version",
            "Registry version being served (0 before the first load)",
            ["model", "alias"],
            registry=self.registry,
        )
        version.labels(manager.model_name, manager.alias).set_function(
            lambda: manager.current.meta.version if manager.current is not None else 0
        )
        compiled = Gauge(
            "inference_compiled_path",
            "1 when the served model runs on the compiled numpy path, 0 on scikit-learn",
            registry=self.registry,
        )
        compiled.set_function(
            lambda: 1 if manager.current is not None and manager.current.compiled else 0
        )
        degraded = Gauge(
            "inference_degraded",
            "1 while a model is served but a dependency cannot be used or the model came from "
            "the local cache unconfirmed (/health says which), else 0",
            registry=self.registry,
        )
        degraded.set_function(lambda: 1 if manager.current is not None and manager.degraded else 0)


def _held_rows(sink: HoldsRows) -> Callable[[], float]:
    return lambda: sink.held_rows
