"""Inference's own Prometheus metrics, beside the request counts every service has.

``InferenceMetrics`` is made first; the manager, handler and batcher get its ``model_event``,
``overloaded`` and ``batch_scored`` at construction, the prediction log's and the feedback's
sinks ``prediction_logged`` and ``feedback_stored``, and the app serves its registry.
"""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class VariantSeries:
    """The Prometheus series of one variant (alias) of the served model, children resolved once:
    a request pays a few increments, not label lookups."""

    __slots__ = ("_classes", "_error", "_latency", "_ok", "_parent", "_rows", "_sum", "alias")

    def __init__(self, alias: str, parent: InferenceMetrics) -> None:
        self.alias = alias
        self._parent = parent
        self._ok = parent.variant_requests.labels(alias, "ok")
        self._error = parent.variant_requests.labels(alias, "error")
        self._latency = parent.variant_latency.labels(alias)
        self._rows = parent.variant_rows.labels(alias)
        self._sum = parent.variant_prediction_sum.labels(alias)
        self._classes: dict[Any, Any] = {}

    def served(self, latency_s: float, model: ServedModel, prediction: Prediction) -> None:
        self._ok.inc()
        self._latency.observe(latency_s)
        predictions = prediction.predictions
        self._rows.inc(len(predictions))
        if prediction.classes is None:
            # Regression: the sum, with the rows, gives the mean prediction over any window.
            total = sum(v for v in predictions if v is not None and v == v)
            self._sum.inc(total)
        elif len(predictions) == 1:
            self._class(predictions[0]).inc()
        else:
            for label, count in Tally(predictions).items():
                self._class(label).inc(count)

    def failed(self) -> None:
        self._error.inc()

    def retire(self) -> None:
        """The variant left the rollout: its version is no longer reported."""
        with contextlib.suppress(KeyError):
            self._parent.variant_version.remove(self.alias)

    def _class(self, label: Any) -> Any:
        child = self._classes.get(label)
        if child is None:
            name = str(label) if len(self._classes) < MAX_CLASS_SERIES else "other"
            child = self._classes[label] = self._parent.variant_classes.labels(self.alias, name)
        return child


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
        self.variant_requests = Counter(
            "inference_variant_requests",
            "Requests per variant (the alias that answered, or the mirror): ok, or error (a "
            "variant other than champion failed rows champion then answered; or it broke)",
            ["variant", "outcome"],
            registry=self.registry,
        )
        self.variant_latency = Histogram(
            "inference_variant_request_duration_seconds",
            "Time from the route starting to the variant's prediction being ready",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.variant_rows = Counter(
            "inference_variant_rows",
            "Rows a variant predicted",
            ["variant"],
            registry=self.registry,
        )
        self.variant_classes = Counter(
            "inference_variant_predictions",
            "Classifiers: rows a variant predicted as each class (the prediction distribution)",
            ["variant", "prediction"],
            registry=self.registry,
        )
        self.variant_prediction_sum = Gauge(
            "inference_variant_prediction_sum",
            "Regressors: the sum of a variant's predictions (over inference_variant_rows_total: "
            "their mean)",
            ["variant"],
            registry=self.registry,
        )
        self.variant_version = Gauge(
            "inference_variant_version",
            "Version a variant serves (0: not loaded; its share goes to champion)",
            ["variant"],
            registry=self.registry,
        )
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
        """The series of variant ``alias`` (its manager's version reported when given)."""
        if manager is not None:
            self.variant_version.labels(alias).set_function(
                lambda: manager.current.meta.version if manager.current is not None else 0
            )
        return VariantSeries(alias, self)

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
