"""The demo model the platform trains on its first start, so that inference answers at once.

A logistic regression on scikit-learn's breast cancer set, trained through the trainer's API and
promoted to ``champion``; then it waits until inference serves it. The idempotency key is the
same on every start, so a second start finds the finished job instead of training again.

``mlops up`` (tools/stack) calls ``ensure_demo_model``; compose's one-shot ``bootstrap`` job runs
``python -m mlops_common.demo`` in the trainer image, with its settings in the environment:

  TRAINER_URL, INFERENCE_URL   where the services answer
  MLOPS_TOKEN                  the API token sent as ``Authorization: Bearer`` (the operator's)
  DEMO_MODEL, DEMO_DATASET     ``demo`` / ``breast_cancer`` by default
  DEMO_ENABLED                 ``false`` skips the demo (the job then only exits 0)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from mlops_common.http import wait_until

JOB_TIMEOUT_S = 600.0
SERVE_TIMEOUT_S = 180.0


def demo_request(model: str, dataset: str) -> dict[str, Any]:
    return {
        "model_name": model,
        "dataset": {"builtin": dataset},
        "algorithm": "logistic_regression",
        "promote": {"alias": "champion", "metric": "roc_auc", "min_improvement": 0.0},
        # The same on every start: a retried or repeated start never trains twice.
        "idempotency_key": f"mlops-demo-{model}",
    }


def ensure_demo_model(
    trainer_url: str,
    inference_url: str,
    token: str,
    *,
    model: str = "demo",
    dataset: str = "breast_cancer",
    out: Callable[[str], None] = print,
    job_timeout_s: float = JOB_TIMEOUT_S,
    serve_timeout_s: float = SERVE_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
) -> bool:
    """Train (once) and promote the demo model, then wait until inference serves it."""
    headers = {"Authorization": f"Bearer {token}"}
    trainer_url = trainer_url.rstrip("/")
    with httpx.Client(headers=headers, timeout=30, transport=transport) as client:
        if not _trained(client, trainer_url, model, dataset, out, job_timeout_s):
            return False
        started = time.monotonic()
        health = f"{inference_url.rstrip('/')}/health"
        if not wait_until(
            lambda: client.get(health, timeout=2).status_code == 200, serve_timeout_s
        ):
            out(f"inference did not load {model}@champion within {serve_timeout_s:.0f}s")
            return False
    out(f"inference serving {model}@champion (+{time.monotonic() - started:.1f}s)")
    return True


def _trained(
    trainer: httpx.Client,
    trainer_url: str,
    model: str,
    dataset: str,
    out: Callable[[str], None],
    timeout_s: float,
) -> bool:
    submitted = trainer.post(f"{trainer_url}/v1/train", json=demo_request(model, dataset))
    if submitted.status_code not in (200, 202):
        out(f"the trainer refused the demo job: HTTP {submitted.status_code} {submitted.text}")
        return False
    job: dict[str, Any] = submitted.json()
    job_id = job["job_id"]
    out(f"training the demo model {model!r} on {dataset!r}: job {job_id} ({job['status']})")
    started, seen = time.monotonic(), [job["status"]]

    def finished() -> bool:
        try:
            answer = trainer.get(f"{trainer_url}/v1/jobs/{job_id}")
        except httpx.HTTPError:  # the API restarting: ask again
            return False
        if answer.status_code == 200:
            job.update(answer.json())
        if job["status"] != seen[-1]:
            seen.append(job["status"])
            out(f"  job {job_id}: {job['status']} (+{time.monotonic() - started:.1f}s)")
        return job["status"] in ("succeeded", "failed")

    if not wait_until(finished, timeout_s, interval_s=0.5) or job["status"] != "succeeded":
        out(f"demo training did not succeed: {job.get('error') or job['status']}")
        return False
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted((job.get("metrics") or {}).items()))
    out(f"  version {job['model_version']} registered ({metrics}); promoted: {job['promoted']}")
    return True


def main() -> int:
    """The compose ``bootstrap`` job."""
    env = os.environ

    def log(message: str) -> None:
        print(f"bootstrap: {message}", flush=True)

    if env.get("DEMO_ENABLED", "true").lower() in ("0", "false", "no"):
        log("DEMO_ENABLED is false: no demo model")
        return 0
    token = env.get("MLOPS_TOKEN")
    if not token:
        log("MLOPS_TOKEN is not set: the trainer's API needs a token")
        return 1
    done = ensure_demo_model(
        env.get("TRAINER_URL", "http://trainer:8810"),
        env.get("INFERENCE_URL", "http://inference:8800"),
        token,
        model=env.get("DEMO_MODEL", "demo"),
        dataset=env.get("DEMO_DATASET", "breast_cancer"),
        out=log,
    )
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
