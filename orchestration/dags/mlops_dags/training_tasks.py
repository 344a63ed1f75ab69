"""Train-and-promote tasks: every call to a service goes over HTTP, through Airflow connections."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from airflow.sdk import PokeReturnValue, task
from airflow.sdk.exceptions import AirflowFailException

from mlops_dags.connections import GATEWAY, INFERENCE, TRAINER, service_client

log = logging.getLogger(__name__)


def fail_on_client_error(response: httpx.Response, what: str) -> None:
    """4xx will not get better with a retry: fail the task for good, with the service's reason."""
    if 400 <= response.status_code < 500:
        raise AirflowFailException(f"{what}: {response.status_code} {response.text[:1000]}")
    response.raise_for_status()


def training_request(
    manifest: dict[str, Any], params: dict[str, Any], dag_id: str, run_id: str
) -> dict[str, Any]:
    """The trainer job for the ETL output: trained on its train split, evaluated with the
    champion on its test split, decided by the trainer but not moved (``promote`` moves it)."""
    return {
        "model_name": params["model_name"],
        "dataset": {
            "uri": manifest["train_uri"],
            "test_uri": manifest["test_uri"],
            "target": manifest["target"],
        },
        "algorithm": params["algorithm"] or None,
        "params": params["algorithm_params"] or {},
        "promote": {
            "alias": params["alias"],
            "metric": params["metric"],
            "min_improvement": float(params["margin"]),
            "move_alias": False,
        },
        "lineage": {
            "dag_id": dag_id,
            "dag_run_id": run_id,
            "etl_manifest": manifest["manifest_uri"],
            **({"reason": params["trigger_reason"]} if params.get("trigger_reason") else {}),
        },
        "idempotency_key": f"airflow:{dag_id}:{run_id}:{params['model_name']}",
    }


@task
def submit_training(
    manifest: dict[str, Any],
    params: dict[str, Any] | None = None,
    run_id: str | None = None,
    dag: Any = None,
) -> str:
    """Ask the trainer to train on the ETL output; the key makes a retried task reuse the job."""
    assert params is not None and run_id is not None
    dag_id = str(getattr(dag, "dag_id", None) or "train_and_promote")
    body = training_request(manifest, params, dag_id, run_id)
    with service_client(TRAINER) as client:
        response = client.post("/v1/train", json=body)
    fail_on_client_error(response, "the trainer refused the job")
    job = response.json()
    log.info("training job %s %s for %s", job["job_id"], job["status"], params["model_name"])
    return str(job["job_id"])


def finished_job(job_id: str, what: str) -> dict[str, Any] | None:
    """The trainer's job once it succeeded, None while it is queued or running; a failed job
    fails the task for good with the trainer's reason."""
    with service_client(TRAINER) as client:
        response = client.get(f"/v1/jobs/{job_id}")
    fail_on_client_error(response, f"job {job_id}")
    job: dict[str, Any] = response.json()
    if job["status"] == "failed":
        raise AirflowFailException(f"{what} job {job_id} failed: {job['error']}")
    if job["status"] != "succeeded":
        log.info("job %s is %s", job_id, job["status"])
        return None
    return job


# Reschedule mode: between pokes the task gives its worker slot back.
@task.sensor(poke_interval=5, timeout=3600, mode="reschedule")
def wait_for_training(job_id: str) -> PokeReturnValue:
    """Wait for the training job; a failed job fails this task with the trainer's reason."""
    job = finished_job(job_id, "training")
    if job is None:
        return PokeReturnValue(is_done=False)
    log.info(
        "job %s: %s v%s, metrics %s",
        job_id,
        job["model_name"],
        job["model_version"],
        job["metrics"],
    )
    return PokeReturnValue(is_done=True, xcom_value=job)


@task
def compare(job: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer's comparison: challenger and champion scored on the ETL's test split."""
    assert params is not None
    decision = job_decision(job, params["model_name"], params["alias"])
    log.info("decision: %s", decision["reason"])
    log.info("comparison: %s", decision.get("comparison"))
    return decision


def job_decision(job: dict[str, Any], name: str, alias: str) -> dict[str, Any]:
    """The decision the trainer reported for ``alias``; one it did not make fails the run
    (the registry's recorded metrics were measured on other rows: no fair comparison)."""
    promotion = job.get("promotion")
    if not promotion or promotion.get("alias") != alias or "promote" not in promotion:
        raise AirflowFailException(
            f"job {job.get('job_id')} reported no comparison for {name}@{alias} "
            f"(promotion: {promotion!r}); is the trainer older than this DAG?"
        )
    return {
        **promotion,
        "promote": bool(promotion["promote"]),
        "model_name": name,
        "alias": alias,
        "candidate_version": job["model_version"],
    }


@task.short_circuit
def challenger_wins(decision: dict[str, Any]) -> bool:
    """Skips promotion (visible in the UI) when the challenger is not better; the log says why."""
    log.info("%s", decision["reason"])
    return bool(decision["promote"])


@task
def promote(decision: dict[str, Any], run_id: str | None = None) -> int:
    """Move the alias through the gateway, which audits who moved it and why."""
    name, alias, version = decision["model_name"], decision["alias"], decision["candidate_version"]
    with service_client(GATEWAY) as client:
        response = client.put(
            f"/v1/models/{name}/aliases/{alias}",
            json={"version": version, "reason": decision["reason"]},
            headers={"X-Actor": f"airflow:train_and_promote/{run_id}"},
        )
    fail_on_client_error(response, f"moving {name}@{alias}")
    log.info("%s@%s -> v%s (was v%s)", name, alias, version, response.json()["previous_version"])
    return int(version)


@task.sensor(poke_interval=3, timeout=300, mode="reschedule")
def inference_serves(version: int, params: dict[str, Any] | None = None) -> PokeReturnValue:
    """The promoted version is what inference answers with (when it serves this model)."""
    assert params is not None
    with service_client(params["inference_conn_id"] or INFERENCE, timeout_s=10) as client:
        response = client.get("/model-info")
    if response.status_code == 503:
        return PokeReturnValue(is_done=False)
    response.raise_for_status()
    info = response.json()
    if info["name"] != params["model_name"]:
        log.info(
            "inference serves %s, not %s: nothing to check", info["name"], params["model_name"]
        )
        return PokeReturnValue(is_done=True, xcom_value=info)
    log.info("inference serves %s v%s; waiting for v%s", info["name"], info["version"], version)
    return PokeReturnValue(is_done=info["version"] == version, xcom_value=info)
