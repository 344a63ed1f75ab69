"""Monitor a served model: drift and live quality; retrain when a threshold is passed.

Hourly once unpaused, or on demand. The trainer's workers compare the model's recent prediction
log (`window_hours`, or from `window_start`) with the training data of the version `alias` names,
feature by feature with Evidently, and score the labels sent back to inference
(`POST /v1/feedback`). The job logs an MLflow run in the `monitoring` experiment (figures,
decision, HTML report) and the trainer exports the figures on its /metrics. When the drift share
reaches `max_drift_share` or the live metric is `max_quality_drop` worse than the run's, this DAG
triggers `train_and_promote` for the model, with the reason in its conf (`trigger_reason`,
tagged on the new run) and `retrain_params` (data set, algorithm, ...) as its params; at most one
retraining per served version and UTC day.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, dag
from mlops_common.names import NEW_MODEL_NAME_PATTERN
from mlops_dags.monitor_tasks import (
    RETRAIN_DAG_ID,
    needs_retraining,
    retraining_request,
    submit_monitoring,
    wait_for_monitoring,
)
from mlops_dags.tasks import TASK_DEFAULTS

PARAMS: dict[str, Any] = {
    "model_name": Param("demo", type="string", pattern=NEW_MODEL_NAME_PATTERN),
    "alias": Param("champion", type="string", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,255}$"),
    "window_hours": Param(1.0, type="number", exclusiveMinimum=0, maximum=744),
    "window_start": Param(
        "",
        type="string",
        description="ISO 8601 time with a zone (e.g. 2026-12-02T10:00:00Z); empty: "
        "window_hours before now",
    ),
    "min_rows": Param(100, type="integer", minimum=10),
    "min_labels": Param(30, type="integer", minimum=1),
    "max_drift_share": Param(0.5, type="number", exclusiveMinimum=0, maximum=1),
    "max_quality_drop": Param(0.1, type="number", exclusiveMinimum=0),
    "retrain": Param(True, type="boolean", description="false: report, never retrain"),
    "retrain_params": Param(
        {}, type="object", description="params of the triggered train_and_promote run"
    ),
}


@dag(
    dag_id="monitor_model",
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC", run_immediately=False),
    catchup=False,
    max_active_runs=1,
    default_args=TASK_DEFAULTS,
    tags=["mlops", "monitoring"],
    params=PARAMS,
    doc_md=__doc__,
    # The trigger's conf is a template of the request's dict: rendered as the dict, not its text.
    render_template_as_native_obj=True,
)
def monitor_model() -> None:
    job = wait_for_monitoring(submit_monitoring())
    request = retraining_request(job)
    needs_retraining(job) >> request
    request >> TriggerDagRunOperator(
        task_id="trigger_retraining",
        trigger_dag_id=RETRAIN_DAG_ID,
        trigger_run_id="{{ ti.xcom_pull(task_ids='retraining_request')['run_id'] }}",
        conf="{{ ti.xcom_pull(task_ids='retraining_request')['conf'] }}",
        skip_when_already_exists=True,
        doc_md="Triggers train_and_promote for the model, with the reason in its conf; skipped "
        "when this served version was already retrained today.",
    )


monitor_model()
