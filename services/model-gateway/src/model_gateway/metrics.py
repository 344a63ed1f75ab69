"""The gateway's own Prometheus metrics, registered on the app's registry next to the HTTP ones."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # Only committed moves are counted, so the label values are names MLflow already holds.
        self.alias_moves = Counter(
            "gateway_alias_moves_total",
            "Alias moves committed (moves to the version the alias already names excluded)",
            ("model", "alias"),
            registry=registry,
        )
        self.alias_events_failed = Counter(
            "gateway_alias_events_failed_total",
            "Committed alias moves whose pub/sub announcement failed (subscribers fall back to "
            "polling)",
            registry=registry,
        )
        self.served_reports_refused = Counter(
            "gateway_served_reports_refused_total",
            "Resolves whose X-Inference-Instance or X-Served-Version header was malformed (the "
            "resolve is answered, the report is not recorded)",
            registry=registry,
        )
        self.served_reports_failed = Counter(
            "gateway_served_reports_failed_total",
            "Served-version reports that could not be recorded (database error, or too many "
            "writes pending)",
            registry=registry,
        )
