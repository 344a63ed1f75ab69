"""Inference's own Prometheus metrics, beside the request counts every service has."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inference.handler import PredictionHandler
from inference.manager import ModelManager

BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def install_inference_metrics(
    registry: CollectorRegistry, manager: ModelManager, handler: PredictionHandler, batcher: object
) -> None:
    version = Gauge(
        "inference_model_version",
        "Registry version being served (0 before the first load)",
        ["model", "alias"],
        registry=registry,
    )
    version.labels(manager.model_name, manager.alias).set_function(
        lambda: manager.current.meta.version if manager.current is not None else 0
    )
    compiled = Gauge(
        "inference_compiled_path",
        "1 when the served model runs on the compiled numpy path, 0 on scikit-learn",
        registry=registry,
    )
    compiled.set_function(lambda: 1 if manager.current is not None and manager.current.fast else 0)
    events = Counter(
        "inference_model_events_total",
        "Model swaps, versions refused for what their artifacts ask for (rejected), and versions "
        "that failed to download, load or verify otherwise (load_failed)",
        ["event"],
        registry=registry,
    )
    for event in ("swapped", "rejected", "load_failed"):
        events.labels(event)
    manager.on_event = lambda event: events.labels(event).inc()
    rejected = Counter(
        "inference_overload_rejections_total",
        "Requests answered 503 because the service was at capacity",
        registry=registry,
    )
    handler.on_overload = lambda _reason: rejected.inc()
    batch_requests = Histogram(
        "inference_batch_requests",
        "Requests sharing one batched model call",
        buckets=BATCH_ROWS_BUCKETS,
        registry=registry,
    )
    batch_rows = Histogram(
        "inference_batch_rows",
        "Rows in one batched model call",
        buckets=BATCH_ROWS_BUCKETS,
        registry=registry,
    )

    def record(requests: int, rows: int) -> None:
        batch_requests.observe(requests)
        batch_rows.observe(rows)

    if batcher is not None:
        batcher.on_batch = record  # type: ignore[attr-defined]
