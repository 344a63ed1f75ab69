"""ETL: a raw data set in, checked train/test splits and a manifest out, under s3://data/processed/.

Trigger with params: `source` (a built-in set such as `breast_cancer`, or `s3://data/raw/x.csv`),
`target` (the label column, for s3 sources), `dataset_name`, `test_size`, `seed`, and the checks
`max_null_fraction` and `ranges` (`{"column": [low, high]}`).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag
from mlops_dags.tasks import ETL_PARAMS, TASK_DEFAULTS, extract, split_and_write, validate


@dag(
    dag_id="etl_dataset",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    is_paused_upon_creation=False,
    default_args=TASK_DEFAULTS,
    tags=["mlops", "etl"],
    params=ETL_PARAMS,
    doc_md=__doc__,
)
def etl_dataset() -> None:
    split_and_write(validate(extract()))


etl_dataset()
