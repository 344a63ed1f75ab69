"""Monitoring tasks: the trainer's workers compute drift and live quality; the DAG acts on it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import PokeReturnValue, task

from mlops_dags.connections import TRAINER, service_client
from mlops_dags.training_tasks import fail_on_client_error, finished_job

log = logging.getLogger(__name__)

RETRAIN_DAG_ID = "train_and_promote"


def monitoring_request(params: dict[str, Any], dag_id: str, run_id: str) -> dict[str, Any]:
    """The trainer's monitoring job for this run's params."""
    body: dict[str, Any] = {
        "model_name": params["model_name"],
        "alias": params["alias"],
        "window_hours": float(params["window_hours"]),
        "min_rows": int(params["min_rows"]),
        "min_labels": int(params["min_labels"]),
        "max_drift_share": float(params["max_drift_share"]),
        "max_quality_drop": float(params["max_quality_drop"]),
        "idempotency_key": f"airflow:{dag_id}:{run_id}:{params['model_name']}",
    }
    if params.get("window_start"):
        body["start"] = params["window_start"]
    return body


def retraining_conf(job: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """What the triggered train_and_promote run gets: the same model and alias, the reason, and
    the operator's `retrain_params` (data set, algorithm, ...)."""
    result = job["result"]
    reason = "; ".join(result["decision"]["reasons"])
    return {
        **(params.get("retrain_params") or {}),
        "model_name": params["model_name"],
        "alias": params["alias"],
        "trigger_reason": f"monitor_model: {reason} (monitoring run {result.get('run_id')})",
    }


def retraining_run_id(job: dict[str, Any], now: datetime | None = None) -> str:
    """At most one retraining per served version and UTC day: a drift that outlives one
    retraining (a challenger that lost) waits for the next day, not the next hour."""
    day = (now or datetime.now(UTC)).date().isoformat()
    return f"monitor__{job['model_name']}__v{job['result']['version']}__{day}"


@task
def submit_monitoring(
    params: dict[str, Any] | None = None, run_id: str | None = None, dag: Any = None
) -> str:
    """Ask the trainer for a monitoring job; the key makes a retried task reuse the job."""
    assert params is not None and run_id is not None
    dag_id = str(getattr(dag, "dag_id", None) or "monitor_model")
    with service_client(TRAINER) as client:
        response = client.post("/v1/monitor", json=monitoring_request(params, dag_id, run_id))
    fail_on_client_error(response, "the trainer refused the monitoring job")
    job = response.json()
    log.info("monitoring job %s %s for %s", job["job_id"], job["status"], params["model_name"])
    return str(job["job_id"])


@task.sensor(poke_interval=5, timeout=3600, mode="reschedule")
def wait_for_monitoring(job_id: str) -> PokeReturnValue:
    """Wait for the monitoring job; a failed job fails this task with the trainer's reason."""
    job = finished_job(job_id, "monitoring")
    if job is None:
        return PokeReturnValue(is_done=False)
    result = job["result"]
    log.info(
        "%s v%s: %d rows, drift %s, quality %s, notes %s",
        job["model_name"],
        result["version"],
        result["rows"],
        result["drift"] and {k: result["drift"][k] for k in ("share", "drifted")},
        result["quality"],
        result["notes"],
    )
    return PokeReturnValue(is_done=True, xcom_value=job)


@task.short_circuit
def needs_retraining(job: dict[str, Any], params: dict[str, Any] | None = None) -> bool:
    """Skips the trigger (visible in the UI) unless a threshold was passed; the log says why."""
    assert params is not None
    decision = job["result"]["decision"]
    for reason in decision["reasons"]:
        log.info("threshold passed: %s", reason)
    if not decision["retrain"]:
        log.info("no threshold passed: no retraining")
        return False
    if not params["retrain"]:
        log.info("retraining is off for this run (param retrain)")
        return False
    return True


@task
def retraining_request(job: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run id and conf of the train_and_promote run to trigger."""
    assert params is not None
    request = {"run_id": retraining_run_id(job), "conf": retraining_conf(job, params)}
    log.info("retraining %s as %s: %s", RETRAIN_DAG_ID, request["run_id"], request["conf"])
    return request
