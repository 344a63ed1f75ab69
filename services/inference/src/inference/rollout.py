"""Serving a rollout: the model's traffic split between registry aliases, as the gateway says.

The gateway keeps the rollout (``GET /v1/models/{name}/rollout``, see model_gateway.rollouts).
``Rollout`` follows it the way the manager follows an alias: polled every ``poll_interval_s``
and at once on a ``rollout`` event. Each alias the rollout names gets a ``ModelManager`` of its
own, which downloads, verifies and test-predicts its version exactly as a swap does. Until a
variant serves, its share stays with the holder (``champion``, the instance's own manager): a
rollout that starts, changes or names a version that fails its load check never fails a request.

Per request (``pick``), no rollout costs one attribute test. With one, a point in [0, 10000) -
the sticky header's value hashed (BLAKE2b: the same on every replica and after restarts), or at
random - falls in one variant's range of the cumulative weights. Ranges are laid out in the
rollout's order, so raising the last variant's weight only moves keys to it.

A request a variant other than the holder fails (the model refuses rows, or breaks) is answered
by the holder instead, and counts as that variant's error only when the holder's answer
succeeds: the caller's own bad input fails everywhere and is nobody's error.

The mirror gets a copy of every answered request, queued to a thread of its own: it is scored
after the response is on its way, its answer goes to the prediction log (``mirror`` true) and
its metrics, never to the caller; when the thread falls behind, copies are dropped and counted.

The guard: once a second, each variant other than the holder that has ``min_requests`` requests
in this revision is checked: its error rate, and the p99 latency of its last 2,048 answers. A
variant that breaks it stops taking traffic here at once, and the gateway is asked to abort the
rollout (scope ``rollouts:abort``) with the figures that tripped it; every replica then follows
the abort. Until the gateway has it, the abort is asked again every second.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import random
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from inference.errors import describe_exception
from inference.gateway import GatewayClient, GatewayError
from inference.manager import ModelManager
from inference.metrics import VariantSeries
from inference.model import Prediction, ServedModel
from inference.prediction_log import PredictionLog
from inference.validation import build_frame, build_frame_from_columns

log = logging.getLogger(__name__)

HOLDER = "champion"
# Weights are percents; points are finer so that sticky keys spread evenly within a percent.
POINTS = 10_000
_POINTS_PER_PERCENT = POINTS // 100
# Latencies kept per variant for the guard's p99 (a power of two: the ring index is a mask).
LATENCY_RING = 2048
GUARD_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Guard:
    max_error_rate: float
    max_p99_ms: float | None
    min_requests: int


@dataclass(frozen=True)
class Plan:
    """An active rollout as the gateway states it (``RolloutView``)."""

    revision: int
    variants: tuple[tuple[str, int], ...]
    mirror: str | None
    sticky_header: str | None
    guard: Guard | None

    @classmethod
    def from_view(cls, body: Mapping[str, Any]) -> Plan | None:
        """The plan of an active rollout, None for none; ValueError when the body is malformed."""
        if body.get("active") is not True:
            return None
        try:
            variants = tuple((str(v["alias"]), int(v["weight"])) for v in body["variants"])
            mirror = body.get("mirror")
            guard = body.get("guard")
            plan = cls(
                revision=int(body["revision"]),
                variants=variants,
                mirror=None if mirror is None else str(mirror["alias"]),
                sticky_header=body.get("sticky_header") or None,
                guard=None
                if guard is None
                else Guard(
                    max_error_rate=float(guard["max_error_rate"]),
                    max_p99_ms=None
                    if guard.get("max_p99_ms") is None
                    else float(guard["max_p99_ms"]),
                    min_requests=int(guard["min_requests"]),
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a rollout: {describe_exception(exc)}") from exc
        if sum(w for _, w in variants) != 100 or any(w < 0 for _, w in variants):
            raise ValueError(f"weights {[w for _, w in variants]} do not sum to 100")
        return plan

    @property
    def aliases(self) -> set[str]:
        """Every alias that needs a model: variants with traffic, and the mirror."""
        named = {alias for alias, weight in self.variants if weight > 0}
        return named | ({self.mirror} if self.mirror else set())


class Variant:
    """One alias of the model being served: its manager, its figures for the guard, its
    Prometheus series."""

    __slots__ = ("alias", "count", "errors", "latencies", "manager", "requests", "series")

    def __init__(self, alias: str, manager: ModelManager, series: VariantSeries) -> None:
        self.alias = alias
        self.manager = manager
        self.series = series
        self.reset()

    def reset(self) -> None:
        """A new revision: the guard judges it on its own requests."""
        self.requests = 0
        self.errors = 0
        self.count = 0
        self.latencies = array("d", bytes(8 * LATENCY_RING))

    @property
    def model(self) -> ServedModel | None:
        return self.manager.current

    def served(self, latency_s: float, model: ServedModel, prediction: Prediction) -> None:
        self.requests += 1
        self.latencies[self.count & (LATENCY_RING - 1)] = latency_s
        self.count += 1
        self.series.served(latency_s, model, prediction)

    def failed(self) -> None:
        self.requests += 1
        self.errors += 1
        self.series.failed()

    def p99_ms(self) -> float | None:
        kept = min(self.count, LATENCY_RING)
        if kept == 0:
            return None
        return float(np.percentile(np.frombuffer(self.latencies)[:kept], 99)) * 1000.0


@dataclass(frozen=True)
class _Routes:
    plan: Plan
    # Upper ends of the variants' point ranges, and the variant each range goes to.
    bounds: tuple[int, ...]
    targets: tuple[Variant, ...]
    sticky: str | None
    mirror: Variant | None


# What the mirror scores: a /predict body, or V2's named columns and their row count.
MirrorInput = tuple[Literal["json"], bytes] | tuple[Literal["columns"], dict[str, list[Any]], int]


class Rollout:
    """Follows the model's rollout and picks the variant of each request."""

    def __init__(
        self,
        *,
        holder: ModelManager,
        gateway: GatewayClient,
        make_manager: Callable[[str], ModelManager],
        series: Callable[[str, ModelManager], VariantSeries],
        prediction_log: PredictionLog | None,
        poll_interval_s: float = 2.0,
        mirror_queue: int = 1024,
        mirror_queue_bytes: int = 64 * 1024 * 1024,
        on_mirror: Callable[[str], None] = lambda _outcome: None,
        on_guard_trip: Callable[[str], None] = lambda _alias: None,
        follow: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = holder.model_name
        self.holder = Variant(holder.alias, holder, series(holder.alias, holder))
        self._gateway = gateway
        self._make_manager = make_manager
        self._series = series
        self._poll_interval_s = poll_interval_s
        # False: an instance pinned to another alias than champion serves only that alias.
        self.follows = follow
        self._clock = clock
        self._routes: _Routes | None = None
        self._plan: Plan | None = None
        self._variants: dict[str, Variant] = {}
        self.tripped: str | None = None
        self._abort_pending: tuple[str, dict[str, float]] | None = None
        self._gateway_error: str | None = None
        self._mirror = _MirrorThread(prediction_log, mirror_queue, on_mirror, mirror_queue_bytes)
        self._on_guard_trip = on_guard_trip
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- the request side ------------------------------------------------------------------------
    def pick(self, headers: Mapping[str, str] | None) -> Variant:
        """The variant to answer a request: the holder unless a rollout sends it elsewhere and
        that variant serves."""
        routes = self._routes
        if routes is None:
            return self.holder
        key = headers.get(routes.sticky) if routes.sticky and headers is not None else None
        if key:
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") % POINTS
        else:
            point = random.randrange(POINTS)  # noqa: S311 - a traffic split, not a secret
        variant = routes.targets[bisect.bisect_right(routes.bounds, point)]
        return variant if variant.manager.current is not None else self.holder

    def variant_serving(self, version: int) -> Variant | None:
        """The variant (the holder first) serving ``version`` now, if any."""
        for variant in (self.holder, *self._variants.values()):
            model = variant.manager.current
            if model is not None and model.meta.version == version:
                return variant
        return None

    def mirror(self, payload: MirrorInput, request_id: str) -> None:
        """Queue a copy of an answered request for the mirror (a no-op without one)."""
        routes = self._routes
        if routes is not None and routes.mirror is not None:
            self._mirror.offer(routes.mirror, payload, request_id)

    # ---- state, for /health ----------------------------------------------------------------------
    @property
    def plan(self) -> Plan | None:
        return self._plan

    def state(self) -> dict[str, Any] | None:
        plan = self._plan
        if plan is None:
            return None
        variants = []
        for alias, weight in plan.variants:
            variant = self.variant(alias)
            variants.append({"alias": alias, "weight": weight, **_describe(variant)})
        mirror = self.variant(plan.mirror) if plan.mirror else None
        return {
            "revision": plan.revision,
            "variants": variants,
            "mirror": None if mirror is None else {"alias": plan.mirror, **_describe(mirror)},
            "sticky_header": plan.sticky_header,
            "guard": None if plan.guard is None else plan.guard.__dict__,
            "tripped": self.tripped,
            "last_error": self._gateway_error,
        }

    def variant(self, alias: str) -> Variant | None:
        """The variant following ``alias`` (the holder for champion), if the rollout names it."""
        return self.holder if alias == self.holder.alias else self._variants.get(alias)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._mirror.start()
        if self.follows and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"rollout {self.model_name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._routes = None
        await asyncio.gather(*(v.manager.stop() for v in self._variants.values()))
        await asyncio.to_thread(self._mirror.stop)

    def wake(self) -> None:
        """Ask the gateway now (a rollout event arrived)."""
        self._wake.set()

    def wake_alias(self, alias: str) -> None:
        """An alias a variant follows moved: its manager polls now."""
        variant = self._variants.get(alias)
        if variant is not None:
            variant.manager.wake()

    async def _run(self) -> None:
        due = 0.0
        while True:
            self._wake.clear()
            if self._wake_due(due):
                due = self._clock() + self._poll_interval_s
                try:
                    await self.refresh()
                except Exception:
                    log.exception("following the rollout of %s failed", self.model_name)
            try:
                await self.check_guard()
            except Exception:
                log.exception("checking the rollout guard of %s failed", self.model_name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), GUARD_INTERVAL_S)
                due = 0.0  # an event: ask the gateway now

    def _wake_due(self, due: float) -> bool:
        return self._clock() >= due

    # ---- following the gateway -------------------------------------------------------------------
    async def refresh(self) -> None:
        """Ask the gateway for the rollout and follow it; the last known plan stays while the
        gateway cannot be asked."""
        try:
            body = await self._gateway.rollout(self.model_name)
        except GatewayError as exc:
            if self._gateway_error is None:
                log.warning("cannot read the rollout of %s: %s", self.model_name, exc)
            self._gateway_error = str(exc)
            return
        self._gateway_error = None
        try:
            plan = None if body is None else Plan.from_view(body)
        except ValueError as exc:
            log.error("ignoring the rollout of %s: %s", self.model_name, exc)
            return
        await self.apply(plan)

    async def apply(self, plan: Plan | None) -> None:
        """Serve ``plan`` (None: every request to the holder)."""
        current = self._plan
        if plan == current:
            return
        if plan is not None and current is not None and plan.revision == current.revision:
            return  # also while tripped here: the gateway has not taken the abort yet
        self.tripped = None
        self._abort_pending = None
        variants = dict(self._variants)
        for alias in sorted((plan.aliases if plan else set()) - {self.holder.alias}):
            if alias not in variants:
                manager = self._make_manager(alias)
                variants[alias] = Variant(alias, manager, self._series(alias, manager))
                await manager.start()
        for variant in (self.holder, *variants.values()):
            variant.reset()
        gone = {a: v for a, v in variants.items() if plan is None or a not in plan.aliases}
        for alias in gone:
            del variants[alias]
        self._variants = variants
        self._plan = plan
        self._routes = None if plan is None else self._layout(plan)
        if plan is None:
            log.info("rollout of %s ended: every request to %s", self.model_name, HOLDER)
        else:
            log.info(
                "following the rollout of %s, revision %d: %s%s%s",
                self.model_name,
                plan.revision,
                ", ".join(f"{a} {w}%" for a, w in plan.variants),
                f", mirror {plan.mirror}" if plan.mirror else "",
                f", sticky on {plan.sticky_header}" if plan.sticky_header else "",
            )
        # Stopped only once no route leads to them.
        for variant in gone.values():
            variant.series.retire()
        await asyncio.gather(*(v.manager.stop() for v in gone.values()))

    def _layout(self, plan: Plan) -> _Routes:
        bounds: list[int] = []
        targets: list[Variant] = []
        upper = 0
        for alias, weight in plan.variants:
            if weight == 0:
                continue
            upper += weight * _POINTS_PER_PERCENT
            bounds.append(upper)
            variant = self.variant(alias)
            assert variant is not None
            targets.append(variant)
        return _Routes(
            plan=plan,
            # The last range ends past every point: bisect_right never runs off the end.
            bounds=(*bounds[:-1], POINTS + 1),
            targets=tuple(targets),
            sticky=plan.sticky_header.lower() if plan.sticky_header else None,
            mirror=self.variant(plan.mirror) if plan.mirror else None,
        )

    # ---- the guard -------------------------------------------------------------------------------
    async def check_guard(self) -> None:
        """Trip the guard on a variant that breaks it, then make sure the gateway aborts."""
        plan = self._plan
        if plan is not None and plan.guard is not None and self.tripped is None:
            for alias, weight in plan.variants:
                variant = self._variants.get(alias)
                if variant is None or weight == 0:
                    continue
                broken = _breaks(plan.guard, variant)
                if broken is not None:
                    self._trip(plan, variant, *broken)
                    break
        if self._abort_pending is not None:
            await self._abort()

    def _trip(self, plan: Plan, variant: Variant, why: str, figures: dict[str, float]) -> None:
        # Here at once; the gateway's abort then reaches the other replicas.
        self._routes = None
        self.tripped = f"{variant.alias}: {why}"
        self._on_guard_trip(variant.alias)
        log.error(
            "rollout guard of %s tripped on %s (revision %d): %s; every request to %s",
            self.model_name,
            variant.alias,
            plan.revision,
            why,
            HOLDER,
        )
        reason = f"guard tripped on {variant.alias} (revision {plan.revision}): {why}"
        self._abort_pending = (reason, figures)

    async def _abort(self) -> None:
        assert self._abort_pending is not None
        reason, figures = self._abort_pending
        try:
            await self._gateway.abort_rollout(self.model_name, reason=reason, figures=figures)
        except GatewayError as exc:
            log.warning("cannot abort the rollout of %s yet: %s", self.model_name, exc)
            return
        self._abort_pending = None
        log.info("rollout of %s aborted at the gateway: %s", self.model_name, reason)


def _breaks(guard: Guard, variant: Variant) -> tuple[str, dict[str, float]] | None:
    """Why ``variant`` breaks ``guard``, with the figures; None while it keeps it."""
    requests = variant.requests
    if requests < guard.min_requests:
        return None
    rate = variant.errors / requests
    p99 = variant.p99_ms()
    figures = {"requests": float(requests), "errors": float(variant.errors), "error_rate": rate}
    if p99 is not None:
        figures["p99_ms"] = round(p99, 3)
    if rate > guard.max_error_rate:
        return (
            f"error rate {rate:.4f} > {guard.max_error_rate:g} "
            f"({variant.errors} of {requests} requests)",
            figures,
        )
    if guard.max_p99_ms is not None and p99 is not None and p99 > guard.max_p99_ms:
        return f"p99 {p99:.1f} ms > {guard.max_p99_ms:g} ms over {requests} requests", figures
    return None


def _describe(variant: Variant | None) -> dict[str, Any]:
    model = None if variant is None else variant.manager.current
    return {
        "version": None if model is None else model.meta.version,
        "ready": model is not None,
        "requests": 0 if variant is None else variant.requests,
        "errors": 0 if variant is None else variant.errors,
        "last_error": None if variant is None else variant.manager.last_error,
    }


class _MirrorThread:
    """Scores the mirror's copies, one at a time, off the event loop."""

    def __init__(
        self,
        prediction_log: PredictionLog | None,
        max_queued: int,
        on_outcome: Callable[[str], None],
        max_queued_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._log = prediction_log
        self._max_queued = max_queued
        # Bodies are kept until scored: bounded in bytes too, or large ones could fill memory.
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._on_outcome = on_outcome
        self._queue: deque[tuple[Variant, MirrorInput, str, int]] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mirror", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def offer(self, variant: Variant, payload: MirrorInput, request_id: str) -> None:
        size = len(payload[1]) if payload[0] == "json" else payload[2] * len(payload[1]) * 16
        if (
            len(self._queue) >= self._max_queued
            or self._queued_bytes + size > self._max_queued_bytes
        ):
            self._on_outcome("dropped")
            return
        with self._ready:
            self._queue.append((variant, payload, request_id, size))
            self._queued_bytes += size
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    dropped = len(self._queue)
                    self._queue.clear()
                    for _ in range(dropped):
                        self._on_outcome("dropped")
                    return
                variant, payload, request_id, size = self._queue.popleft()
                self._queued_bytes -= size
            self._score(variant, payload, request_id)
            # Hand the GIL to the event loop between copies: a backlog scored back to back would
            # otherwise keep requests waiting for up to the interpreter's switch interval (5 ms).
            time.sleep(0)

    def _score(self, variant: Variant, payload: MirrorInput, request_id: str) -> None:
        model = variant.manager.current
        if model is None:
            self._on_outcome("skipped")
            return
        started = time.perf_counter()
        try:
            inputs, prediction = _score_copy(model, payload)
        except Exception as exc:
            variant.failed()
            self._on_outcome("failed")
            log.debug("mirror %s failed request %s: %s", variant.alias, request_id, exc)
            return
        variant.served(time.perf_counter() - started, model, prediction)
        self._on_outcome("scored")
        if self._log is not None:
            self._log.record(request_id, started, model, inputs, prediction, mirror=True)


def _score_copy(model: ServedModel, payload: MirrorInput) -> tuple[Any, Prediction]:
    """The mirror's own reading of the request (its signature may differ), then its answer."""
    from inference.handlers import parse_instances

    if payload[0] == "json":
        decoded = model.decode_json(payload[1])
        if decoded is None:
            frame = build_frame(parse_instances(payload[1]), model.input_schema)
            return frame, model.predict(frame)
    else:
        _, columns, rows = payload
        decoded = model.decode_columns(columns, rows)
        if decoded is None:
            frame = build_frame_from_columns(columns, rows, model.input_schema)
            return frame, model.predict(frame)
    predictions, probabilities = model.predict_matrix(model.transform(decoded))
    return decoded, model.as_prediction(predictions, probabilities)
