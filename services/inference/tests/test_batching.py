"""Adaptive batching: concurrent requests share model calls, each gets its own rows back."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from inference.batching import Batcher, QueueFull

pytestmark = pytest.mark.anyio


class SlowModel:
    """Doubles its input; records the batch sizes it was called with; can be held mid-call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def predict_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self.entered.set()
        self.release.wait(5)
        self.calls.append(x.shape[0])
        return x[:, 0] * 2, np.column_stack([x[:, 0], -x[:, 0]])


async def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    model = SlowModel()
    batcher = Batcher(max_size=64, max_wait_s=0.05, max_queued=100)
    batcher.start()
    try:
        inputs = [np.full((1 + i % 3, 1), float(i)) for i in range(30)]
        results = await asyncio.gather(*(batcher.submit(model, x) for x in inputs))  # type: ignore[arg-type]
    finally:
        await batcher.stop()
    for x, (predictions, probabilities) in zip(inputs, results, strict=True):
        assert predictions.tolist() == (x[:, 0] * 2).tolist()
        assert probabilities is not None and probabilities[:, 1].tolist() == (-x[:, 0]).tolist()
    assert sum(model.calls) == sum(x.shape[0] for x in inputs)
    assert len(model.calls) < len(inputs) / 3


async def test_a_batch_never_exceeds_its_size() -> None:
    model = SlowModel()
    batcher = Batcher(max_size=8, max_wait_s=0.05, max_queued=100)
    batcher.start()
    try:
        await asyncio.gather(*(batcher.submit(model, np.ones((3, 1))) for _ in range(10)))  # type: ignore[arg-type]
    finally:
        await batcher.stop()
    assert max(model.calls) <= 8 and sum(model.calls) == 30


async def test_rows_of_different_models_are_never_mixed() -> None:
    old, new = SlowModel(), SlowModel()
    batcher = Batcher(max_size=64, max_wait_s=0.05, max_queued=100)
    batcher.start()
    try:
        jobs = [batcher.submit(old if i % 2 else new, np.ones((1, 1))) for i in range(10)]  # type: ignore[arg-type]
        await asyncio.gather(*jobs)
    finally:
        await batcher.stop()
    assert sum(old.calls) == 5 and sum(new.calls) == 5


async def test_a_full_queue_refuses_instead_of_waiting() -> None:
    model = SlowModel()
    model.release.clear()
    batcher = Batcher(max_size=1, max_wait_s=0.0, max_queued=3)
    batcher.start()
    pending: list[Any] = []
    try:
        pending.append(asyncio.ensure_future(batcher.submit(model, np.ones((1, 1)))))  # type: ignore[arg-type]
        # Until the first request is held inside the model.
        assert await asyncio.to_thread(model.entered.wait, 5)
        pending += [asyncio.ensure_future(batcher.submit(model, np.ones((1, 1)))) for _ in range(3)]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert batcher.queued == 3
        with pytest.raises(QueueFull):
            await batcher.submit(model, np.ones((1, 1)))  # type: ignore[arg-type]
    finally:
        model.release.set()
        await asyncio.gather(*pending)
        await batcher.stop()
