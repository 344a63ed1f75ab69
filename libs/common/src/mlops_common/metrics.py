"""Prometheus metrics every service exposes: request counts and latencies per route, ``/metrics``.

``install_metrics(app, "trainer")`` adds a pure ASGI middleware and the ``GET /metrics`` route and
returns the app's registry, on which the service registers its own metrics. Each app gets its own
``CollectorRegistry`` so several apps in one process (tests) never register a name twice.

Label values stay bounded whatever clients send: ``route`` is the matched route's path template
(``/items/{name}``, never the raw path) or ``unmatched``, and unknown HTTP methods become ``OTHER``.
"""

from __future__ import annotations

from time import perf_counter

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
OTHER_METHOD = "OTHER"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Predictions and alias lookups answer in (sub)milliseconds; the upper buckets still separate
# slow upstream calls from requests stuck until a 10 s timeout.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_Children = tuple[Counter, Histogram]


class _RequestMetrics:
    """The request metrics of one app, with the labelled children cached per label set."""

    def __init__(self, service: str, registry: CollectorRegistry, skip: BaseRoute) -> None:
        self.service = service
        self.skip = skip
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route template and status code",
            ("service", "method", "route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time from receiving an HTTP request to sending the last byte of its response",
            ("service", "method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # ``labels()`` takes a lock and builds a tuple on every call; the label sets are few
        # (bounded methods x routes x statuses), so each is looked up once.
        self._children: dict[tuple[str, str, int], _Children] = {}

    def children(self, method: str, route: str, status: int) -> _Children:
        key = (method, route, status)
        found = self._children.get(key)
        if found is None:
            found = (
                self.requests.labels(self.service, method, route, str(status)),
                self.duration.labels(self.service, method, route),
            )
            self._children[key] = found
        return found


class PrometheusMiddleware:
    """Counts and times each HTTP request; a plain ASGI app so the hot path pays one timer pair."""

    def __init__(self, app: ASGIApp, metrics: _RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # An exception escaping the app becomes a 500 in Starlette's outermost middleware.
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = perf_counter() - start
            # The router stores the matched route in the scope it shares with its middleware.
            route = scope.get("route")
            if route is not self.metrics.skip:
                template = getattr(route, "path", None)
                method = scope["method"]
                counter, histogram = self.metrics.children(
                    method if method in KNOWN_METHODS else OTHER_METHOD,
                    template if isinstance(template, str) else UNMATCHED,
                    status,
                )
                counter.inc()
                histogram.observe(elapsed)


def install_metrics(
    app: FastAPI, service: str, registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """Count and time every request of ``app`` and serve ``GET /metrics``; returns the registry.

    Call it in the app factory, before the app serves its first request (Starlette builds the
    middleware stack then).
    """
    registry = CollectorRegistry() if registry is None else registry

    def scrape(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        METRICS_PATH,
        scrape,
        methods=["GET"],
        include_in_schema=False,
        response_class=Response,
        name="metrics",
    )
    # Scrapes would otherwise dominate the counts of a quiet service.
    metrics = _RequestMetrics(service, registry, skip=app.router.routes[-1])
    app.add_middleware(PrometheusMiddleware, metrics=metrics)
    return registry
