"""The demo bootstrap that `mlops up` and compose's `bootstrap` job share."""

from __future__ import annotations

import json
from typing import Any

import httpx
from mlops_common.demo import ensure_demo_model


class FakePlatform:
    """Trainer (one job, finished after two reads) and inference (serving after the job)."""

    def __init__(self, *, outcome: str = "succeeded") -> None:
        self.outcome = outcome
        self.submitted: list[dict[str, Any]] = []
        self.reads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        if request.url.path == "/v1/train":
            self.submitted.append(json.loads(request.content))
            return httpx.Response(202, json={"job_id": "j1", "status": "queued"})
        if request.url.path == "/v1/jobs/j1":
            self.reads += 1
            status = "running" if self.reads < 2 else self.outcome
            body = {"job_id": "j1", "status": status, "model_version": 1, "promoted": True}
            return httpx.Response(200, json={**body, "metrics": {"roc_auc": 0.99}, "error": None})
        if request.url.path == "/health":
            return httpx.Response(200 if self.reads >= 2 else 503)
        return httpx.Response(404)


def test_trains_promotes_and_waits_until_served() -> None:
    platform, lines = FakePlatform(), []
    done = ensure_demo_model(
        "http://trainer", "http://inference", "tok", out=lines.append,
        transport=httpx.MockTransport(platform),
    )  # fmt: skip
    assert done
    [request] = platform.submitted
    assert request["promote"]["alias"] == "champion"
    # The same key on every start: a second `up` finds the job instead of training again.
    assert request["idempotency_key"] == "mlops-demo-demo"
    assert any("succeeded" in line for line in lines)
    assert lines[-1].startswith("inference serving demo@champion")


def test_a_failed_job_is_reported_not_waited_on() -> None:
    platform, lines = FakePlatform(outcome="failed"), []
    done = ensure_demo_model(
        "http://trainer", "http://inference", "tok", out=lines.append, serve_timeout_s=0.1,
        transport=httpx.MockTransport(platform),
    )  # fmt: skip
    assert not done
    assert lines[-1].startswith("demo training did not succeed")
