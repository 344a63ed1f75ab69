"""Train and promote: ETL, train through the trainer's API, promote only a better challenger.

Runs weekly, Mondays 03:00 UTC, once unpaused and on demand with params: `model_name`, `source`/`target`
(the data set), `algorithm` and `algorithm_params`, `metric` and `margin` for the comparison, and
the ETL params. The trainer trains on the ETL's train split and scores the challenger and the
champion (`alias`) on the ETL's test split, the same rows for both; `compare` takes its decision,
`promote` moves the alias through the gateway. The job's run and version are tagged with this
DAG run and the ETL manifest. A failed training or a rejected challenger shows in the UI with its
reason in the task log.

Canary instead of promotion: `rollout` (default null: move the alias) starts a rollout on the
gateway when the challenger wins, e.g. `{"weight": 10, "guard": {"max_error_rate": 0.01,
"max_p99_ms": 50, "min_requests": 500}, "sticky_header": "X-User-Id", "mirror": null}`. `promote`
points `rollout_alias` (default `challenger`) at the new version, then splits requests: champion
keeps `100 - weight` percent, `rollout_alias` gets `weight` (an integer, 1 to 99). `guard` (the
limits the new version must keep or inference aborts the rollout), `sticky_header` (requests with
the same value of this header land on the same variant) and `mirror` (an alias that gets a copy of
every request) are optional. A rollout is always against champion, so `alias` must be `champion`
(the run fails before training otherwise). A model without a champion gets no rollout: the new
version takes champion, as without `rollout`. `inference_serves` then waits until inference serves
the new version as one of its variants. Ending the rollout (`POST /v1/models/{name}/rollout/promote`
or `…/abort` on the gateway) is not this DAG's job.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronTriggerTimetable, Param, dag
from mlops_common.names import NEW_MODEL_NAME_PATTERN, SETTABLE_ALIAS_PATTERN
from mlops_common.promotion import ALL_METRICS
from mlops_dags.tasks import ETL_PARAMS, TASK_DEFAULTS, extract, split_and_write, validate
from mlops_dags.training_tasks import (
    ROLLOUT_PARAMS,
    challenger_wins,
    compare,
    inference_serves,
    promote,
    submit_training,
    wait_for_training,
)

PARAMS: dict[str, Any] = {
    **ETL_PARAMS,
    "model_name": Param("demo", type="string", pattern=NEW_MODEL_NAME_PATTERN),
    "alias": Param("champion", type="string", pattern=SETTABLE_ALIAS_PATTERN),
    "algorithm": Param(
        "logistic_regression", type="string", description="empty: the trainer's default"
    ),
    "algorithm_params": Param({}, type="object"),
    "metric": Param("roc_auc", type="string", enum=ALL_METRICS),
    "margin": Param(0.0, type="number", minimum=0),
    "trigger_reason": Param(
        "", type="string", description="why the run was started (set by monitor_model)"
    ),
    "inference_conn_id": Param(
        "inference_api", type="string", description="connection of the inference service to check"
    ),
    **ROLLOUT_PARAMS,
}


@dag(
    dag_id="train_and_promote",
    # Mondays 03:00 UTC. No start date: unpausing waits for the next slot instead of running the
    # most recent missed one at once.
    schedule=CronTriggerTimetable("0 3 * * 1", timezone="UTC", run_immediately=False),
    catchup=False,
    max_active_runs=1,
    default_args=TASK_DEFAULTS,
    tags=["mlops", "training"],
    params=PARAMS,
    doc_md=__doc__,
)
def train_and_promote() -> None:
    manifest = split_and_write(validate(extract()))
    job = wait_for_training(submit_training(manifest))
    decision = compare(job)
    promoted = promote(decision)
    challenger_wins(decision) >> promoted
    inference_serves(promoted)


train_and_promote()
