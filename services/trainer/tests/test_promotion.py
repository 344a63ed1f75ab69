from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from mlops_common.signing import generate_key_pair
from trainer.schemas import Promotion
from trainer.training import Trainer

PRIVATE, _ = generate_key_pair()


class FakeGateway:
    def __init__(self, holder: dict[str, Any] | None) -> None:
        self.holder = holder
        self.moves: list[tuple[int, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if self.holder is None:
                return httpx.Response(404, json={"error": {"code": "not_found"}})
            return httpx.Response(200, json=self.holder)
        body = json.loads(request.content)
        self.moves.append((body["version"], request.headers["x-actor"]))
        return httpx.Response(200, json={"version": body["version"]})


def make_trainer(gateway: FakeGateway, holder_metrics: dict[str, float]) -> Trainer:
    run = SimpleNamespace(data=SimpleNamespace(metrics=holder_metrics))
    return Trainer(
        store=None,  # type: ignore[arg-type]  # promotion reads no data set
        gateway=httpx.Client(base_url="http://gw", transport=httpx.MockTransport(gateway.handle)),
        mlflow_client=SimpleNamespace(get_run=lambda _run_id: run),  # type: ignore[arg-type]
        experiment="promotion",
        max_rows=1,
        signing_key=PRIVATE,
    )


def promote(
    trainer: Trainer, metrics: dict[str, float], spec: Promotion, task: str = "classification"
) -> tuple[bool, dict[str, Any]]:
    return trainer.promote("m", 5, task, metrics, spec, "job-1")  # type: ignore[arg-type]


def test_first_version_takes_a_free_alias() -> None:
    gateway = FakeGateway(None)
    promoted, decision = promote(make_trainer(gateway, {}), {"f1": 0.8}, Promotion())
    assert promoted and gateway.moves == [(5, "trainer:job/job-1")]
    assert "no model held champion" in decision["reason"]


@pytest.mark.parametrize(
    ("mine", "theirs", "margin", "expected"),
    [
        (0.90, 0.80, 0.0, True),
        (0.80, 0.90, 0.0, False),
        (0.85, 0.85, 0.0, False),
        (0.85, 0.80, 0.1, False),
        (0.95, 0.80, 0.1, True),
    ],
)
def test_higher_is_better_metric_needs_the_margin(
    mine: float, theirs: float, margin: float, expected: bool
) -> None:
    gateway = FakeGateway({"version": 4, "run_id": "r4"})
    promoted, decision = promote(
        make_trainer(gateway, {"f1": theirs}), {"f1": mine}, Promotion(min_improvement=margin)
    )
    assert promoted is expected
    assert bool(gateway.moves) is expected
    assert decision["current_version"] == 4 and decision["current_value"] == theirs


def test_lower_is_better_for_rmse() -> None:
    gateway = FakeGateway({"version": 2, "run_id": "r2"})
    promoted, _ = promote(
        make_trainer(gateway, {"rmse": 50.0}), {"rmse": 40.0}, Promotion(), task="regression"
    )
    assert promoted
    gateway = FakeGateway({"version": 2, "run_id": "r2"})
    promoted, decision = promote(
        make_trainer(gateway, {"rmse": 40.0}), {"rmse": 50.0}, Promotion(), task="regression"
    )
    assert not promoted and decision["reason"].startswith("not promoted: rmse 50.0000")


def test_metric_of_the_other_task_is_refused() -> None:
    gateway = FakeGateway(None)
    promoted, decision = promote(
        make_trainer(gateway, {}), {"rmse": 1.0}, Promotion(metric="f1"), task="regression"
    )
    assert not promoted and "does not apply" in decision["reason"] and gateway.moves == []
