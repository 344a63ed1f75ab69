"""Adaptive batching: concurrent requests for a slow model share one model call.

A forest's per-call cost barely grows with the number of rows, so one call on 64 rows costs about
what one call on one row does. Requests queue here; one worker takes whatever is waiting (up to
``max_size`` rows, waiting at most ``max_wait_s`` for more), scores it in a thread and hands each
request its slice. While a batch is scored the next one gathers, so batches grow with load. The
queue is bounded: past ``max_queued`` requests the caller gets 503 rather than an unbounded wait,
and the queue is FIFO, which keeps tail latency close to the median.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inference.model import ServedModel

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the service accepts."""


@dataclass
class _Item:
    model: ServedModel
    x: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, np.ndarray | None]]


class Batcher:
    def __init__(
        self,
        max_size: int,
        max_wait_s: float,
        max_queued: int,
        on_batch: Callable[[int, int], None] = lambda _requests, _rows: None,
    ) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._carry: _Item | None = None
        self._task: asyncio.Task[None] | None = None
        # Told the requests and rows of each batch scored, for /metrics.
        self._on_batch = on_batch

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def queued(self) -> int:
        return self._queue.qsize() + (1 if self._carry is not None else 0)

    async def submit(
        self, model: ServedModel, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.queued >= self.max_queued:
            raise QueueFull(f"{self.queued} requests are already waiting for the model")
        future: asyncio.Future[tuple[np.ndarray, np.ndarray | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait(_Item(model, x, future))
        return await future

    async def _next(self, wait_s: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if wait_s is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if wait_s <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            batch = [first]
            rows = first.x.shape[0]
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_size:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                # Only rows for the same model (and the same width) share a call; during a swap
                # the other model's requests start the next batch.
                if item.model is not first.model or rows + item.x.shape[0] > self.max_size:
                    self._carry = item
                    break
                batch.append(item)
                rows += item.x.shape[0]
            await self._score(first.model, batch)

    async def _score(self, model: ServedModel, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.cancelled()]
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.vstack([item.x for item in live])
        try:
            predictions, probabilities = await asyncio.to_thread(model.predict_matrix, x)
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._on_batch(len(live), x.shape[0])
        start = 0
        for item in live:
            end = start + item.x.shape[0]
            if not item.future.done():
                item.future.set_result(
                    (
                        predictions[start:end],
                        None if probabilities is None else probabilities[start:end],
                    )
                )
            start = end
