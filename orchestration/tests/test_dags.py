"""DAG integrity: every DAG imports cleanly and cheaply, has no cycle, and retries its tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_imports_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"etl_dataset", "train_and_promote", "monitor_model"}


def test_parsing_imports_no_heavy_libraries() -> None:
    # The dag-processor parses these files every few seconds: data libraries load inside tasks.
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag; "
        f"b = DagBag(dag_folder={str(DAGS)!r}); assert not b.import_errors, b.import_errors; "
        "print('HEAVY=' + ','.join(m for m in ('pandas', 'sklearn', 'boto3', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def _has_cycle(dag: Any) -> bool:
    state: dict[str, int] = {}

    def visit(task_id: str) -> bool:
        if state.get(task_id) == 1:
            return True
        if state.get(task_id) == 2:
            return False
        state[task_id] = 1
        if any(visit(d) for d in dag.get_task(task_id).downstream_task_ids):
            return True
        state[task_id] = 2
        return False

    return any(visit(t.task_id) for t in dag.tasks)


def test_no_cycles_and_every_task_retries_with_a_timeout(dagbag: Any) -> None:
    for dag in dagbag.dags.values():
        assert not _has_cycle(dag), dag.dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id} has no retries"
            assert task.retry_exponential_backoff, f"{dag.dag_id}.{task.task_id} has no backoff"
            assert task.execution_timeout is not None, f"{dag.dag_id}.{task.task_id} has no timeout"
            assert task.doc_md or getattr(task, "python_callable", None).__doc__, task.task_id


def test_train_and_promote_gates_promotion_on_the_comparison(dagbag: Any) -> None:
    dag = dagbag.dags["train_and_promote"]
    assert dag.get_task("promote").upstream_task_ids == {"compare", "challenger_wins"}
    assert dag.get_task("inference_serves").upstream_task_ids == {"promote"}
    assert dag.get_task("wait_for_training").mode == "reschedule"
    assert dag.get_task("submit_training").upstream_task_ids == {"split_and_write"}


def test_monitor_model_triggers_retraining_only_past_a_threshold(dagbag: Any) -> None:
    dag = dagbag.dags["monitor_model"]
    trigger = dag.get_task("trigger_retraining")
    assert trigger.trigger_dag_id == "train_and_promote"
    assert trigger.skip_when_already_exists
    assert trigger.upstream_task_ids == {"retraining_request"}
    assert dag.get_task("retraining_request").upstream_task_ids == {
        "wait_for_monitoring",
        "needs_retraining",
    }
    assert dag.get_task("wait_for_monitoring").mode == "reschedule"
    # The retraining run's params are the monitor's conf: train_and_promote must accept them.
    assert {"model_name", "alias", "trigger_reason"} <= set(dagbag.dags["train_and_promote"].params)


def test_train_and_promote_moves_the_alias_unless_asked_for_a_rollout(dagbag: Any) -> None:
    params = dagbag.dags["train_and_promote"].params
    assert params["rollout"] is None
    assert params["rollout_alias"] == "challenger"
    assert params["alias"] == "champion"
