"""Model artifacts made as someone with a registry account could make them: refused, never run.

Every attack is a real MLflow model dir on disk. Pickles carry a ``__reduce__`` that creates a
marker (the control test shows MLflow's own loader does run it); none of them may create it here.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from inference.artifacts import ArtifactCache
from inference.errors import ModelLoadError, ModelRejected
from inference.model import ModelVersion, load_served_model
from mlops_common.storage import ObjectStore, S3Uri
from mlops_common.trusted_types import PLATFORM_TRUSTED_TYPES
from skops import io as skops_io

from .conftest import BUCKET, churn_frame, sign

META = ModelVersion(name="m", version=1, alias="champion", artifact_uri="s3://mlflow/m/1")
ROW = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}
TRUSTED = list(PLATFORM_TRUSTED_TYPES)


# ---- what the trainer builds (trainer.pipeline.build_pipeline and trainer.algorithms) ----------
def trainer_frame() -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    """``churn_frame`` as the trainer hands it to its pipeline (normalise_categoricals)."""
    frame, labels = churn_frame(120, seed=3)
    for column in ("city", "plan", "member"):
        values = frame[column].astype(object)
        frame[column] = values.where(values.isna(), values.astype(str)).where(
            values.notna(), np.nan
        )
    return frame, labels


def trainer_pipeline(frame: pd.DataFrame, estimator: Any) -> Any:
    """The same steps as ``trainer.pipeline.build_pipeline`` (inference does not import trainer)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [
        c
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    categorical = [c for c in frame.columns if c not in numeric]
    numeric_steps = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
    )
    categorical_steps = Pipeline(
        [
            ("impute_nan", SimpleImputer(strategy="constant", fill_value="__missing__")),
            (
                "impute_none",
                SimpleImputer(missing_values=None, strategy="constant", fill_value="__missing__"),
            ),
            ("encode", OneHotEncoder(handle_unknown="ignore", min_frequency=1)),
        ]
    )
    pre = ColumnTransformer(
        [("numeric", numeric_steps, numeric), ("categorical", categorical_steps, categorical)],
        remainder="drop",
    )
    return Pipeline([("preprocess", pre), ("model", estimator)])


def trainer_estimators() -> dict[str, tuple[Any, str]]:
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    return {
        "logistic_regression": (LogisticRegression(max_iter=1000), "classification"),
        "random_forest_c": (RandomForestClassifier(n_estimators=5, n_jobs=1), "classification"),
        "gradient_boosting_c": (GradientBoostingClassifier(n_estimators=5), "classification"),
        "hist_gradient_boosting_c": (HistGradientBoostingClassifier(max_iter=5), "classification"),
        "ridge": (Ridge(), "regression"),
        "linear_regression": (LinearRegression(), "regression"),
        "random_forest_r": (RandomForestRegressor(n_estimators=5, n_jobs=1), "regression"),
        "gradient_boosting_r": (GradientBoostingRegressor(n_estimators=5), "regression"),
        "hist_gradient_boosting_r": (HistGradientBoostingRegressor(max_iter=5), "regression"),
    }


def fitted(name: str) -> tuple[Any, pd.DataFrame]:
    frame, labels = trainer_frame()
    estimator, task = trainer_estimators()[name]
    target = labels if task == "classification" else frame["income"].to_numpy() / 1000
    return trainer_pipeline(frame, estimator).fit(frame, target), frame


def save(model: Any, path: Path, frame: pd.DataFrame | None = None, **kwargs: Any) -> Path:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(frame, model.predict(frame)) if frame is not None else None,
            input_example=frame.head(3) if frame is not None else None,
            pip_requirements=["scikit-learn"],
            **kwargs,
        )
    return path


def trainer_trusted(model: Any) -> list[str]:
    """What the trainer writes as skops_trusted_types (trainer.training.trusted_types)."""
    found = skops_io.get_untrusted_types(data=skops_io.dumps(model))
    return [t for t in found if t.split(".", 1)[0] in {"numpy", "scipy", "sklearn", "builtins"}]


def test_the_platform_list_is_exactly_what_trainer_pipelines_need() -> None:
    needed: set[str] = set()
    for name in trainer_estimators():
        model, _ = fitted(name)
        found = set(skops_io.get_untrusted_types(data=skops_io.dumps(model)))
        assert found <= set(PLATFORM_TRUSTED_TYPES), name
        needed |= found
    assert needed == set(PLATFORM_TRUSTED_TYPES)


@pytest.mark.parametrize(
    "name", ["logistic_regression", "hist_gradient_boosting_c", "random_forest_r"]
)
def test_a_trainer_model_loads_and_predicts_identically(tmp_path: Path, name: str) -> None:
    model, frame = fitted(name)
    path = save(
        model, tmp_path / "model", frame, serialization_format="skops",
        skops_trusted_types=trainer_trusted(model),
    )  # fmt: skip
    served = load_served_model(path, META)
    prediction = served.predict(frame)
    assert prediction.predictions == model.predict(frame).tolist()
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(prediction.probabilities, model.predict_proba(frame))
    if name == "logistic_regression":
        assert served.compiled  # the compiled path still takes it


# ---- the attacks ---------------------------------------------------------------------------------
class Boom:
    """Unpickling this creates ``marker``: what any code run by a pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _ridge() -> tuple[Any, pd.DataFrame]:
    return fitted("ridge")


def _edit_mlmodel(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    change(mlmodel)
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def _eval_pipeline() -> Any:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    ridge = Ridge().fit(np.ones((3, 1)), [1.0, 2.0, 3.0])
    return Pipeline([("run", FunctionTransformer(func=eval)), ("model", ridge)])


def pickled(fmt: str) -> Callable[[Path, Path], Path]:
    def make(path: Path, marker: Path) -> Path:
        return save(Boom(marker), path, serialization_format=fmt)

    return make


def eval_listed(path: Path, marker: Path) -> Path:
    trusted = [*TRUSTED, "builtins.eval"]
    return save(_eval_pipeline(), path, serialization_format="skops", skops_trusted_types=trusted)


def eval_unlisted(path: Path, marker: Path) -> Path:
    eval_listed(path, marker)
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(skops_trusted_types=TRUSTED))
    return path


def shipped_code(path: Path, marker: Path) -> Path:
    code = path.parent / "evil_code"
    code.mkdir(parents=True)
    (code / "evil_mod.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    model, frame = _ridge()
    return save(
        model, path, frame, serialization_format="skops", skops_trusted_types=TRUSTED,
        code_paths=[str(code)],
    )  # fmt: skip


def legit(path: Path) -> Path:
    model, frame = _ridge()
    return save(model, path, frame, serialization_format="skops", skops_trusted_types=TRUSTED)


def other_flavor(path: Path, marker: Path) -> Path:
    legit(path)
    _edit_mlmodel(path, lambda m: m["flavors"].update(pytorch={"model_data": "data"}))
    return path


def pyfunc_loader(path: Path, marker: Path) -> Path:
    legit(path)
    _edit_mlmodel(path, lambda m: m["flavors"]["python_function"].update(loader_module="evil"))
    return path


def no_sklearn_flavor(path: Path, marker: Path) -> Path:
    legit(path)
    _edit_mlmodel(path, lambda m: m["flavors"].pop("sklearn"))
    return path


def unknown_format(path: Path, marker: Path) -> Path:
    legit(path)
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(serialization_format="joblib"))
    return path


def model_file_outside(path: Path, marker: Path) -> Path:
    legit(path)
    (path / "model.skops").rename(path.parent / "outside.skops")
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(pickled_model="../outside.skops"))
    return path


def model_file_absolute(path: Path, marker: Path) -> Path:
    legit(path)
    target = str((path / "model.skops").resolve())
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(pickled_model=target))
    return path


def model_file_symlink(path: Path, marker: Path) -> Path:
    legit(path)
    (path / "model.skops").rename(path.parent / "outside.skops")
    (path / "model.skops").symlink_to(path.parent / "outside.skops")
    return path


def example_outside(path: Path, marker: Path) -> Path:
    legit(path)
    _edit_mlmodel(
        path, lambda m: m["saved_input_example_info"].update(artifact_path="../../etc/passwd")
    )
    return path


def yaml_object_tag(path: Path, marker: Path) -> Path:
    legit(path)
    text = (path / "MLmodel").read_text()
    (path / "MLmodel").write_text(f"pwn: !!python/object/apply:os.mkdir [{str(marker)!r}]\n{text}")
    return path


ATTACKS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "pickle": (pickled("pickle"), r"refused: serialization_format 'pickle'"),
    "cloudpickle": (pickled("cloudpickle"), r"refused: serialization_format 'cloudpickle'"),
    "unknown format": (unknown_format, r"refused: serialization_format 'joblib'"),
    "MLmodel trusts builtins.eval": (
        eval_listed,
        r"refused: the MLmodel trusts types the platform does not: builtins\.eval",
    ),
    "skops file holds builtins.eval": (
        eval_unlisted,
        r"refused: model\.skops holds types the platform does not trust: builtins\.eval",
    ),
    "code dir": (shipped_code, r"refused: MLmodel|refused: the \w+ flavor ships code \(code:"),
    "other flavor": (other_flavor, r"refused: flavor pytorch is not served here"),
    "pyfunc loader": (pyfunc_loader, r"refused: the python_function flavor names loader_module"),
    "no sklearn flavor": (no_sklearn_flavor, r"refused: not an sklearn-flavor model"),
    "model file outside": (model_file_outside, r"refused: pickled_model '\.\./outside\.skops'"),
    "model file absolute": (model_file_absolute, r"refused: pickled_model .* is an absolute path"),
    "model file symlink": (
        model_file_symlink,
        r"refused: .* 'model\.skops' resolves outside the model directory",
    ),
    "input example outside": (example_outside, r"refused: the input example '\.\./\.\./etc"),
    "yaml object tag": (yaml_object_tag, r"refused: the MLmodel is not plain YAML"),
}


@pytest.fixture
def clean_imports() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    assert sys.path == path, "a model's code was put on sys.path"
    assert "evil_mod" not in sys.modules
    for name in set(sys.modules) - modules:
        assert not name.startswith("evil"), name


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attacks_are_refused_before_anything_runs(
    tmp_path: Path, attack: str, clean_imports: None
) -> None:
    make, message = ATTACKS[attack]
    marker = tmp_path / "pwned"
    path = make(tmp_path / "model", marker)
    with pytest.raises(ModelRejected, match=message):
        load_served_model(path, META)
    assert not marker.exists()


def test_the_pickle_attack_is_real_under_mlflows_loader(tmp_path: Path) -> None:
    """Control: MLflow's own loader runs it, so the refusal above is what protects us."""
    import mlflow.sklearn

    marker = tmp_path / "pwned"
    path = pickled("cloudpickle")(tmp_path / "model", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.load_model(str(path))
    assert marker.exists()


def test_mlflow_trusts_the_types_an_artifact_lists(tmp_path: Path) -> None:
    """Control (GHSA-w582-9x45-8mpx): MLflow loads builtins.eval because the MLmodel lists it."""
    import mlflow.sklearn

    path = eval_listed(tmp_path / "model", tmp_path / "unused")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mlflow.sklearn.load_model(str(path))
    assert loaded.steps[0][1].func is eval


def test_a_garbage_skops_file_is_a_load_failure_not_a_rejection(tmp_path: Path) -> None:
    path = legit(tmp_path / "model")
    (path / "model.skops").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=r"cannot read model\.skops \(skops\)") as caught:
        load_served_model(path, META)
    assert not isinstance(caught.value, ModelRejected)


# ---- through the manager: the old version keeps serving, the rejection is counted ---------------
MANAGER_ATTACKS = [
    "pickle",
    "cloudpickle",
    "MLmodel trusts builtins.eval",
    "skops file holds builtins.eval",
    "code dir",
    "other flavor",
]


@pytest.mark.anyio
@pytest.mark.parametrize("attack", MANAGER_ATTACKS)
async def test_a_refused_version_leaves_the_old_one_serving(
    service: Any, gateway: Any, store: Any, tmp_path: Path, attack: str, clean_imports: None
) -> None:
    make, _ = ATTACKS[attack]
    marker = tmp_path / "pwned"
    uri = f"s3://{BUCKET}/models/attack/artifacts"
    # Signed with the platform's key, as a compromised trainer would: refused all the same.
    store.add(uri, sign(make(tmp_path / "attack" / "model", marker), "churn"))
    gateway.versions[("churn", 9)] = uri
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        gateway.set_alias("churn", 9)
        assert not await svc.manager.poll_once()
        health = (await svc.client.get("/health")).json()
        served = await svc.post_json("/predict", {"instances": [ROW]})
        metrics = (await svc.client.get("/metrics")).text

    assert not marker.exists()
    assert health["status"] == "ok"
    assert health["model"]["version"] == 1
    assert health["pending_version"] == 9
    assert health["last_error"].startswith("churn version 9: refused: ")
    assert served.status_code == 200 and served.json()["model"]["version"] == 1
    assert 'inference_model_events_total{event="rejected"} 1.0' in metrics
    assert 'inference_model_events_total{event="load_failed"} 0.0' in metrics


# ---- downloads: no file outside the model's folder ----------------------------------------------
class FakeS3:
    """The two boto3 calls ``ObjectStore.download_prefix`` makes, over in-memory objects."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.downloaded: list[str] = []

    def get_paginator(self, _name: str) -> FakeS3:
        return self

    def paginate(self, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:
        yield {
            "Contents": [
                {"Key": k, "Size": len(v), "ETag": f'"{len(v)}"'}
                for k, v in sorted(self.objects.items())
                if k.startswith(Prefix)
            ]
        }

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.objects[Key])}

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloaded.append(key)
        Path(filename).write_bytes(self.objects[key])


def _objects(prefix: str, local_dir: Path) -> dict[str, bytes]:
    return {
        f"{prefix}/{p.relative_to(local_dir).as_posix()}": p.read_bytes()
        for p in local_dir.rglob("*")
        if p.is_file()
    }


def _escaped(root: Path) -> list[Path]:
    return list(root.rglob("escaped.txt"))


BAD_KEYS = {
    "dot-dot": ("../../../escaped.txt", "has a '..' segment"),
    "dot-dot inside": ("sub/../../../../escaped.txt", "has a '..' segment"),
    "absolute": ("/tmp/escaped.txt", "is an absolute path"),
    "backslash": ("..\\..\\escaped.txt", "contains a backslash"),
    "dot segment": ("./MLmodel", "has an empty or '.' segment"),
}


@pytest.mark.parametrize("relative", [case[0] for case in BAD_KEYS.values()], ids=list(BAD_KEYS))
def test_download_refuses_keys_that_leave_the_folder(tmp_path: Path, relative: str) -> None:
    problem = next(p for r, p in BAD_KEYS.values() if r == relative)
    prefix = "models/evil/artifacts"
    s3 = FakeS3({f"{prefix}/MLmodel": b"flavors: {}", f"{prefix}/{relative}": b"owned"})
    cache = ArtifactCache(ObjectStore(s3), tmp_path / "cache" / "m", None)  # type: ignore[arg-type]
    with pytest.raises(ModelRejected, match=rf"refused: artifact key .* {problem}"):
        cache.fetch("m", f"s3://{BUCKET}/{prefix}")
    assert s3.downloaded == []  # checked before the first byte is written
    assert not _escaped(tmp_path)


def test_the_object_stores_own_download_would_escape(tmp_path: Path) -> None:
    """Control: why inference does not use ``ObjectStore.download_prefix``."""
    prefix = "models/evil/artifacts"
    s3 = FakeS3({f"{prefix}/../escaped.txt": b"owned"})
    dest = tmp_path / "a" / "dest"
    ObjectStore(s3).download_prefix(S3Uri(BUCKET, prefix), dest)  # type: ignore[arg-type]
    assert (tmp_path / "a" / "escaped.txt").exists()


@pytest.mark.anyio
async def test_a_traversing_version_is_refused_through_the_manager(
    service: Any, gateway: Any, artifacts: Any, tmp_path: Path
) -> None:
    good = _objects("models/churn-v1/artifacts", artifacts.dirs["churn-v1"])
    evil = _objects("models/evil/artifacts", artifacts.dirs["churn-v1"])
    evil["models/evil/artifacts/../../../escaped.txt"] = b"owned"
    s3 = FakeS3({**good, **evil})
    gateway.versions[("churn", 9)] = f"s3://{BUCKET}/models/evil/artifacts"
    gateway.set_alias("churn", 1)
    # A plain ObjectStore, as the app builds it: the manager wraps it.
    async with service(artifact_store=ObjectStore(s3)) as svc:  # type: ignore[arg-type]
        assert await svc.manager.poll_once()
        gateway.set_alias("churn", 9)
        assert not await svc.manager.poll_once()
        health = (await svc.client.get("/health")).json()
        metrics = (await svc.client.get("/metrics")).text

    assert not _escaped(tmp_path)
    assert not any(key.startswith("models/evil") for key in s3.downloaded)
    assert health["model"]["version"] == 1
    assert (
        "refused: artifact key 'models/evil/artifacts/../../../escaped.txt'"
        in (health["last_error"])
    )
    assert 'inference_model_events_total{event="rejected"} 1.0' in metrics
