"""The trainer registers only signed versions, and what it signs is what the store holds.

Runs one real training job against an MLflow tracking store in a temporary folder (SQLite and
local artifacts): the same calls the worker makes against the tracking server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlops_common.signing import (
    SIGNATURE_FILE,
    ManifestVerifier,
    SignatureError,
    check_files,
    generate_key_pair,
)
from trainer.schemas import TrainRequest
from trainer.training import Trainer

PRIVATE, PUBLIC = generate_key_pair()


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    # set_tracking_uri also writes MLFLOW_TRACKING_URI: monkeypatch puts the variable back.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("signing", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        yield MlflowClient()
    finally:
        # None, not the URI read before: a URI set here would outlive the test and send every
        # later MLflow call in this process (the e2e tests') to that store.
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _trainer(tracking: MlflowClient) -> Trainer:
    return Trainer(
        store=None,  # type: ignore[arg-type]  # a built-in data set reads nothing from S3
        gateway=None,  # type: ignore[arg-type]  # no promotion asked for
        mlflow_client=tracking,
        experiment="signing",
        max_rows=10_000,
        signing_key=PRIVATE,
    )


def test_a_registered_version_is_signed_for_its_model(tracking: MlflowClient) -> None:
    request = TrainRequest.model_validate(
        {"model_name": "iris-signed", "dataset": {"builtin": "iris"}}
    )
    result = _trainer(tracking).run(request, "job-signing")

    version = tracking.get_model_version("iris-signed", str(result.model_version))
    # The files as stored, as inference reads them (not through MLflow's download, which adds
    # a registered_model_meta file of its own).
    location = tracking.get_logged_model(
        str(version.source).removeprefix("models:/")
    ).artifact_location
    local = Path(location.removeprefix("file://"))
    envelope = (local / SIGNATURE_FILE).read_bytes()
    manifest = ManifestVerifier([PUBLIC]).verify(envelope, model_name="iris-signed")
    check_files(local, manifest)
    assert {"MLmodel", "model.skops"} <= set(manifest.files)
    assert manifest.run_id == result.run_id
    assert version.tags["mlops.manifest_sha256"] == manifest.digest
    assert version.tags["mlops.signed_by"] == manifest.key_id
    # Bound to its model: the same files are no signature for another name.
    with pytest.raises(SignatureError, match="signed for model 'iris-signed'"):
        ManifestVerifier([PUBLIC]).verify(envelope, model_name="fraud")


def test_a_model_that_changed_in_the_store_before_signing_is_not_registered(
    tracking: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is signed is read back from the store and must predict as the fitted pipeline."""
    import skops.io

    real_load = skops.io.load

    def tampered(path: Any, trusted: Any = None) -> Any:
        model = real_load(path, trusted=trusted)
        model.steps[-1][1].classes_ = model.steps[-1][1].classes_[::-1]
        return model

    monkeypatch.setattr("trainer.training.skops_io.load", tampered)
    request = TrainRequest.model_validate(
        {"model_name": "iris-tampered", "dataset": {"builtin": "iris"}}
    )
    with pytest.raises(RuntimeError, match="does not predict as the fitted one"):
        _trainer(tracking).run(request, "job-tampered")
    assert tracking.search_model_versions("name='iris-tampered'") == []


def test_a_retried_job_registers_no_second_version(tracking: MlflowClient) -> None:
    """A retry after its first attempt registered (then crashed) finishes that version."""
    request = TrainRequest.model_validate(
        {"model_name": "iris-once", "dataset": {"builtin": "iris"}}
    )
    first = _trainer(tracking).run(request, "job-once")
    retried = _trainer(tracking).run(request, "job-once")
    other = _trainer(tracking).run(request, "job-other")

    versions = tracking.search_model_versions("name='iris-once'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert (retried.model_version, retried.run_id) == (first.model_version, first.run_id)
    assert retried.metrics == first.metrics and retried.task == "classification"
    assert other.model_version == 2
    by_version = {int(v.version): v.tags.get("mlops.job_id") for v in versions}
    assert by_version == {1: "job-once", 2: "job-other"}
