"""First start: train and promote a demo model so that inference answers at once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from mlops_stack.components import Stack

JOB_TIMEOUT_S = 600.0
SERVE_TIMEOUT_S = 120.0


def ensure_demo_model(stack: Stack, home: Path, out: Callable[[str], None]) -> bool:
    st = stack.settings
    marker = home / "demo.json"
    inference = stack.service_url(st.inference_port)
    # The local user's (admin) API token: the trainer answers nobody without one.
    headers = {"Authorization": f"Bearer {stack.secrets.token_admin}"}
    if not marker.exists():
        trainer = stack.service_url(st.trainer_port)
        request = {
            "model_name": st.demo_model,
            "dataset": {"builtin": st.demo_dataset},
            "algorithm": "logistic_regression",
            "promote": {"alias": "champion", "metric": "roc_auc", "min_improvement": 0.0},
            # Same key on every first start of this state directory: a retried `up` never trains twice.
            "idempotency_key": f"mlops-demo-{st.demo_model}",
        }
        out(f"training the demo model {st.demo_model!r} on {st.demo_dataset!r}")
        job = httpx.post(f"{trainer}/v1/train", json=request, headers=headers, timeout=30).json()
        job_id = job["job_id"]
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < JOB_TIMEOUT_S:
            job = httpx.get(f"{trainer}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if job["status"] != last:
                last = job["status"]
                out(f"  job {job_id}: {last} (+{time.monotonic() - started:.1f}s)")
            if last in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        if last != "succeeded":
            out(
                f"demo training did not succeed: {job.get('error') or last}; see `mlops logs trainer-worker`"
            )
            return False
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted((job.get("metrics") or {}).items()))
        out(f"  version {job['model_version']} registered ({metrics}); promoted: {job['promoted']}")
        marker.write_text(json.dumps({"job_id": job_id, "model_version": job["model_version"]}))
    started = time.monotonic()
    while time.monotonic() - started < SERVE_TIMEOUT_S:
        try:
            if httpx.get(f"{inference}/health", timeout=2).status_code == 200:
                out(
                    f"inference serving {st.demo_model}@champion (+{time.monotonic() - started:.1f}s)"
                )
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    out(
        f"inference did not load {st.demo_model}@champion in {SERVE_TIMEOUT_S:.0f}s; see `mlops logs inference`"
    )
    return False
