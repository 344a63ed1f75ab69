"""Train-and-promote tasks: every call to a service goes over HTTP, through Airflow connections."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from airflow.sdk import PokeReturnValue, task
from airflow.sdk.exceptions import AirflowFailException

from mlops_dags.connections import GATEWAY, INFERENCE, TRAINER, service_client
from mlops_dags.promotion import decide

log = logging.getLogger(__name__)


def _fail_on_client_error(response: httpx.Response, what: str) -> None:
    """4xx will not get better with a retry: fail the task for good, with the service's reason."""
    if 400 <= response.status_code < 500:
        raise AirflowFailException(f"{what}: {response.status_code} {response.text[:1000]}")
    response.raise_for_status()


@task
def submit_training(
    manifest: dict[str, Any], params: dict[str, Any] | None = None, run_id: str | None = None
) -> str:
    """Ask the trainer to train on the ETL output; the key makes a retried task reuse the job."""
    assert params is not None
    body = {
        "model_name": params["model_name"],
        "dataset": {"uri": manifest["train_uri"], "target": manifest["target"]},
        "algorithm": params["algorithm"] or None,
        "params": params["algorithm_params"] or {},
        "idempotency_key": f"airflow:train_and_promote:{run_id}:{params['model_name']}",
    }
    with service_client(TRAINER) as client:
        response = client.post("/v1/train", json=body)
    _fail_on_client_error(response, "the trainer refused the job")
    job = response.json()
    log.info("training job %s %s for %s", job["job_id"], job["status"], params["model_name"])
    return str(job["job_id"])


# Reschedule mode: between pokes the task gives its worker slot back.
@task.sensor(poke_interval=5, timeout=3600, mode="reschedule")
def wait_for_training(job_id: str) -> PokeReturnValue:
    """Wait for the training job; a failed job fails this task with the trainer's reason."""
    with service_client(TRAINER) as client:
        response = client.get(f"/v1/jobs/{job_id}")
    _fail_on_client_error(response, f"job {job_id}")
    job = response.json()
    if job["status"] == "failed":
        raise AirflowFailException(f"training job {job_id} failed: {job['error']}")
    if job["status"] != "succeeded":
        log.info("job %s is %s", job_id, job["status"])
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
    """Challenger against champion on the registry's recorded holdout metric."""
    assert params is not None
    name, alias = params["model_name"], params["alias"]
    with service_client(GATEWAY) as client:
        response = client.get(f"/v1/models/{name}")
    _fail_on_client_error(response, f"model {name}")
    model = response.json()
    champion_version = model["aliases"].get(alias)
    champion = next((v for v in model["versions"] if v["version"] == champion_version), None)
    candidate = {"version": job["model_version"], "metrics": job["metrics"]}
    decision = decide(candidate, champion, alias, params["metric"], float(params["margin"]))
    log.info("decision: %s", decision["reason"])
    return {**decision, "model_name": name, "alias": alias}


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
    _fail_on_client_error(response, f"moving {name}@{alias}")
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
