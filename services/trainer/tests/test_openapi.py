"""The OpenAPI documents what the API enforces: a body the schema allows passes validation.

Schemathesis (tests/e2e/test_api_fuzz.py) warns when an operation rejects most of the data its
schema allows; this is the same property, fast and without a stack.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from trainer.schemas import TrainRequest


def test_every_train_body_the_schema_allows_is_accepted(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = schemathesis.openapi.from_dict(spec)["/v1/train"]["POST"]
    rejected: list[tuple[Any, str]] = []

    @settings(
        max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        try:
            TrainRequest.model_validate(case.body)
        except ValueError as exc:
            rejected.append((case.body, str(exc)[:300]))

    check()
    assert not rejected, rejected[:5]
