"""Train-and-promote tasks: every call to a service goes over HTTP, through Airflow connections."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from airflow.sdk import Param, PokeReturnValue, task
from airflow.sdk.exceptions import AirflowFailException
from mlops_common.names import READABLE_ALIAS_PATTERN, SETTABLE_ALIAS_PATTERN

from mlops_dags.connections import GATEWAY, INFERENCE, TRAINER, service_client

log = logging.getLogger(__name__)

# A rollout always splits between the alias inference serves by default and the new version's
# alias: the gateway sends every request to champion when no rollout is active.
CHAMPION = "champion"
# The sticky header's name: the gateway takes any RFC 9110 token, this DAG only letters, digits
# and '-' (proxies such as nginx drop names with '_' by default: every request would lose it).
HEADER_NAME_PATTERN = r"^[A-Za-z0-9-]{1,64}$"

# The params of a canary instead of an alias move; checked when the run is triggered, so a typo
# fails at once instead of after the training. The bounds are the gateway's.
ROLLOUT_PARAMS: dict[str, Any] = {
    "rollout": Param(
        None,
        type=["null", "object"],
        description=(
            "null: move the alias. Else start a rollout: the new version gets `rollout_alias` "
            "and `weight` percent of champion's requests, e.g. "
            '{"weight": 10, "guard": {"max_error_rate": 0.01, "max_p99_ms": 50, '
            '"min_requests": 500}, "sticky_header": "X-User-Id", "mirror": null}'
        ),
        properties={
            "weight": {"type": "integer", "minimum": 1, "maximum": 99},
            "guard": {
                "type": ["null", "object"],
                "properties": {
                    "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1},
                    "max_p99_ms": {"type": "number", "exclusiveMinimum": 0, "maximum": 600_000},
                    "min_requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                },
                "additionalProperties": False,
            },
            "sticky_header": {"type": ["null", "string"], "pattern": HEADER_NAME_PATTERN},
            "mirror": {"type": ["null", "string"], "pattern": READABLE_ALIAS_PATTERN},
        },
        required=["weight"],
        additionalProperties=False,
    ),
    "rollout_alias": Param(
        "challenger",
        type="string",
        pattern=SETTABLE_ALIAS_PATTERN,
        description="with `rollout`: the alias the new version gets (not champion)",
    ),
}


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
    # Before the trainer spends anything: a rollout that promote would refuse fails the run now.
    rollout_settings(params)
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


def rollout_settings(params: dict[str, Any]) -> dict[str, Any] | None:
    """The run's rollout (``rollout`` plus ``alias``: the new version's alias), None to move
    the alias; a combination the gateway would refuse, or only refuse after an alias moved,
    fails the run."""
    rollout = params.get("rollout")
    if rollout is None:
        return None
    if params["alias"] != CHAMPION:
        raise AirflowFailException(
            f"rollout: a rollout splits between {CHAMPION} and rollout_alias, so alias must be "
            f"{CHAMPION!r}, not {params['alias']!r} (or set rollout to null to move the alias)"
        )
    alias = params.get("rollout_alias") or "challenger"
    if alias == CHAMPION:
        # Moving it first would promote the challenger outright, before any canary.
        raise AirflowFailException(f"rollout_alias must not be {CHAMPION!r}: that is a promotion")
    if rollout.get("mirror") in {CHAMPION, alias}:
        raise AirflowFailException(
            f"rollout.mirror {rollout['mirror']!r} is a variant already; mirror another alias"
        )
    return {**rollout, "alias": alias}


def rollout_request(rollout: dict[str, Any], reason: str) -> dict[str, Any]:
    """The gateway's rollout body: champion keeps ``100 - weight`` percent, the new alias gets
    ``weight``. Integers are sent as integers (the gateway takes no 10.0 for a weight)."""
    weight = int(rollout["weight"])
    guard = rollout.get("guard")
    if guard is not None and guard.get("min_requests") is not None:
        guard = {**guard, "min_requests": int(guard["min_requests"])}
    return {
        "variants": [
            {"alias": CHAMPION, "weight": 100 - weight},
            {"alias": rollout["alias"], "weight": weight},
        ],
        "mirror": rollout.get("mirror"),
        "sticky_header": rollout.get("sticky_header"),
        "guard": guard,
        "reason": reason,
    }


def alias_version(client: httpx.Client, name: str, alias: str) -> int | None:
    """The version ``name@alias`` names now, None when the alias is not set."""
    response = client.get(f"/v1/models/{name}/aliases/{alias}")
    if response.status_code == 404:
        return None
    fail_on_client_error(response, f"resolving {name}@{alias}")
    return int(response.json()["version"])


def move_alias(
    client: httpx.Client, name: str, alias: str, version: int, reason: str, actor: str
) -> None:
    """Point ``name@alias`` at ``version``; the gateway audits the move with the reason."""
    response = client.put(
        f"/v1/models/{name}/aliases/{alias}",
        json={"version": version, "reason": reason},
        headers={"X-Actor": actor},
    )
    fail_on_client_error(response, f"moving {name}@{alias}")
    log.info("%s@%s -> v%s (was v%s)", name, alias, version, response.json()["previous_version"])


@task
def promote(
    decision: dict[str, Any], params: dict[str, Any] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Move the alias through the gateway, which audits who moved it and why; with ``rollout``,
    give the new version ``rollout_alias`` and start a rollout between it and champion."""
    assert params is not None
    name, alias, version = decision["model_name"], decision["alias"], decision["candidate_version"]
    reason, actor = decision["reason"], f"airflow:train_and_promote/{run_id}"
    rollout = rollout_settings(params)
    promoted: dict[str, Any] = {"model_name": name, "version": int(version), "rollout": None}
    with service_client(GATEWAY) as client:
        if rollout is None:
            move_alias(client, name, alias, version, reason, actor)
            return {**promoted, "alias": alias}
        # Without a champion there is nothing to split with: the new version takes champion.
        # Champion naming it already is a retry of that (or of an earlier run's promotion).
        champion = alias_version(client, name, CHAMPION)
        if champion is None or champion == version:
            log.info(
                "%s@%s is %s: no rollout, v%s takes %s",
                name,
                CHAMPION,
                "not set" if champion is None else f"v{champion} already",
                version,
                CHAMPION,
            )
            move_alias(client, name, CHAMPION, version, reason, actor)
            return {**promoted, "alias": CHAMPION}
        # The gateway's rollout names aliases, not versions: the new version needs its alias
        # before the split can send requests to it.
        move_alias(client, name, rollout["alias"], version, reason, actor)
        response = client.put(
            f"/v1/models/{name}/rollout",
            json=rollout_request(rollout, reason),
            headers={"X-Actor": actor},
        )
    fail_on_client_error(response, f"starting the rollout of {name}")
    view: dict[str, Any] = response.json()
    log.info(
        "rollout of %s, revision %s: %s",
        name,
        view.get("revision"),
        ", ".join(f"{v['alias']} v{v['version']} {v['weight']}%" for v in view["variants"]),
    )
    return {**promoted, "alias": rollout["alias"], "rollout": view}


def variant_ready(response: httpx.Response, name: str, version: int) -> bool:
    """Whether inference's ``/v2/models/{name}/versions/{version}/ready`` says a variant serves
    the version. 503 (loading) and 404 (not one of its variants: inference may not have seen the
    rollout yet) are "not yet"; the sensor's timeout bounds the wait."""
    if response.status_code in (404, 503):
        log.info("inference does not serve %s v%s yet: %s", name, version, response.text[:200])
        return False
    fail_on_client_error(response, f"asking inference whether {name} v{version} is ready")
    return bool(response.json().get("ready"))


@task.sensor(poke_interval=3, timeout=300, mode="reschedule")
def inference_serves(
    promoted: dict[str, Any], params: dict[str, Any] | None = None
) -> PokeReturnValue:
    """The promoted version is what inference answers with, or in a rollout one of its variants
    (when it serves this model)."""
    assert params is not None
    name, version = params["model_name"], int(promoted["version"])
    with service_client(params["inference_conn_id"] or INFERENCE, timeout_s=10) as client:
        response = client.get("/model-info")
        if response.status_code == 503:
            return PokeReturnValue(is_done=False)
        response.raise_for_status()
        info = response.json()
        if info["name"] != name:
            log.info("inference serves %s, not %s: nothing to check", info["name"], name)
            return PokeReturnValue(is_done=True, xcom_value=info)
        if promoted.get("rollout") is None:
            log.info("inference serves %s v%s; waiting for v%s", name, info["version"], version)
            return PokeReturnValue(is_done=info["version"] == version, xcom_value=info)
        # /model-info shows one model; in a rollout the new version is one of several variants.
        ready = client.get(f"/v2/models/{name}/versions/{version}/ready")
    return PokeReturnValue(is_done=variant_ready(ready, name, version), xcom_value=info)
