"""One-shot `bootstrap` job of the compose stack: the demo model, as `mlops up` makes it.

Trains the demo model (logistic regression on scikit-learn's breast cancer set) through the
trainer's API, promotes it to `champion`, and waits until inference serves it, so that
`docker compose up --wait` returns with `/predict` answering. The idempotency key is the same on
every start: a second `up` finds the finished job instead of training again.

Standard library only; runs in the trainer image. Settings (environment):
  TRAINER_URL, INFERENCE_URL   where the services answer (compose service names)
  MLOPS_TOKEN                  the API token sent as `Authorization: Bearer` (the operator's)
  DEMO_MODEL, DEMO_DATASET     demo / breast_cancer
  DEMO_ENABLED                 "false" skips the demo (the job then only exits 0)
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

JOB_TIMEOUT_S = 600.0
SERVE_TIMEOUT_S = 180.0


def call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    token = os.environ.get("MLOPS_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 - URLs come from the compose file
        url, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def log(message: str) -> None:
    print(f"bootstrap: {message}", flush=True)


def main() -> int:
    if os.environ.get("DEMO_ENABLED", "true").lower() in ("0", "false", "no"):
        log("DEMO_ENABLED is false: no demo model")
        return 0
    if not os.environ.get("MLOPS_TOKEN"):
        log("MLOPS_TOKEN is not set: the trainer's API needs a token")
        return 1
    trainer = os.environ.get("TRAINER_URL", "http://trainer:8810").rstrip("/")
    inference = os.environ.get("INFERENCE_URL", "http://inference:8800").rstrip("/")
    model = os.environ.get("DEMO_MODEL", "demo")
    dataset = os.environ.get("DEMO_DATASET", "breast_cancer")
    request = {
        "model_name": model,
        "dataset": {"builtin": dataset},
        "algorithm": "logistic_regression",
        "promote": {"alias": "champion", "metric": "roc_auc", "min_improvement": 0.0},
        "idempotency_key": f"mlops-demo-{model}",
    }
    status, job = call("POST", f"{trainer}/v1/train", request)
    if status not in (200, 202):
        log(f"the trainer refused the demo job: HTTP {status} {job}")
        return 1
    job_id = job["job_id"]
    log(f"demo model {model!r} on {dataset!r}: job {job_id} ({job['status']})")
    started, last = time.monotonic(), ""
    while time.monotonic() - started < JOB_TIMEOUT_S:
        try:
            status, body = call("GET", f"{trainer}/v1/jobs/{job_id}")
        except OSError as exc:  # the API restarting: ask again
            log(f"trainer unreachable ({exc}); retrying")
            status, body = 0, None
        if status == 200:
            job = body
            if job["status"] != last:
                last = job["status"]
                log(f"job {job_id}: {last} (+{time.monotonic() - started:.1f}s)")
        if last in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    if last != "succeeded":
        log(f"demo training did not succeed: {job.get('error') or last}")
        return 1
    log(f"version {job['model_version']} registered; promoted: {job['promoted']}")

    started = time.monotonic()
    while time.monotonic() - started < SERVE_TIMEOUT_S:
        try:
            status, _ = call("GET", f"{inference}/health")
        except OSError:
            status = 0
        if status == 200:
            log(f"inference serves {model}@champion (+{time.monotonic() - started:.1f}s)")
            return 0
        time.sleep(0.5)
    log(f"inference did not load {model}@champion within {SERVE_TIMEOUT_S:.0f}s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
