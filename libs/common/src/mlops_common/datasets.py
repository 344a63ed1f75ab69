"""Data sets as the trainer and the ETL DAG both see them: the built-in sets, the table formats
read from S3, and one content digest, so a manifest's digest and a run's digest agree.

Needs pandas (the ``datasets`` extra: ``mlops-common[datasets]``), which only the trainer and the
DAGs install; inference and the gateway never import this module. scikit-learn, which holds the
built-in sets, is imported only when one is loaded.
"""

from __future__ import annotations

import hashlib
import io

import pandas as pd

from mlops_common.promotion import Task

# scikit-learn's bundled sets, each loaded by sklearn.datasets.load_<name>, by the task it poses.
BUILTIN_TASKS: dict[str, Task] = {
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "digits": "classification",
    "diabetes": "regression",
}
BUILTIN_TARGET = "target"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def load_builtin(name: str) -> pd.DataFrame:
    """A built-in set as one table: its features, then its label in the ``target`` column."""
    from sklearn import datasets

    frame: pd.DataFrame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    return frame


def is_parquet(uri: str) -> bool:
    return uri.lower().endswith((".parquet", ".pq"))


def read_table(raw: bytes, uri: str) -> pd.DataFrame:
    """A CSV or Parquet object's content as a table, by the suffix of its ``uri``."""
    if is_parquet(uri):
        return pd.read_parquet(io.BytesIO(raw))
    # Round-trip parsing: the same floats as were written, so a table's digest does not depend
    # on the file format it travelled in (pandas' default parser may differ in the last bit).
    return pd.read_csv(io.BytesIO(raw), float_precision="round_trip")


def frame_digest(frame: pd.DataFrame) -> str:
    """Content digest of a table (values and column names), stable across file formats."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(",".join(map(str, frame.columns)).encode() + hashed).hexdigest()[:16]
