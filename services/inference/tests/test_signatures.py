"""Only what the platform signed is served: every way a version's files can differ is refused.

Each case registers version 9 of ``churn`` while version 1 serves; the refusal must leave version
1 serving, say why in ``/health``, count as ``rejected``, and (where the listing already shows the
difference) download nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from inference.settings import InferenceSettings
from mlops_common.settings import S3Settings
from mlops_common.signing import SIGNATURE_FILE, ManifestSigner, generate_key_pair
from pydantic import SecretStr, ValidationError

from .conftest import BUCKET, SIGNING_PUBLIC_KEY, VERIFIER, sign

pytestmark = pytest.mark.anyio

ROW = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}
URI = f"s3://{BUCKET}/models/attempt/artifacts"


def _copy(artifacts: Any, tmp_path: Path) -> Path:
    target = tmp_path / "attempt"
    shutil.copytree(artifacts.dirs["churn-v2"], target)
    return target


def _unsigned(model: Path) -> None:
    (model / SIGNATURE_FILE).unlink()


def _foreign_key(model: Path) -> None:
    other_key, _ = generate_key_pair()
    envelope = ManifestSigner(other_key).sign_dir(model, model_name="churn")
    (model / SIGNATURE_FILE).write_bytes(envelope)


def _other_model(model: Path) -> None:
    sign(model, "prices")


def _changed(model: Path) -> None:
    data = bytearray((model / "model.skops").read_bytes())
    data[-100] ^= 0xFF  # same size: only the hash tells
    (model / "model.skops").write_bytes(bytes(data))


def _added(model: Path) -> None:
    (model / "extra.py").write_text("print('hello')\n")


def _removed(model: Path) -> None:
    (model / "input_example.json").unlink()


def _forged(model: Path) -> None:
    text = (model / SIGNATURE_FILE).read_text()
    (model / SIGNATURE_FILE).write_text(text.replace('"signature": "', '"signature": "AAAA', 1))


CASES = {
    "unsigned": (_unsigned, "not signed by the platform", False),
    "unknown key": (_foreign_key, "which is not a trusted key", False),
    "signed for another model": (_other_model, "signed for model 'prices', not 'churn'", False),
    "file changed": (_changed, "model.skops changed after it was signed", True),
    "file added": (_added, "extra.py is not in the signed manifest", False),
    "file removed": (_removed, "input_example.json is in the signed manifest but missing", False),
    "signature forged": (_forged, "the signature of mlops-signature.json is not valid", False),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_version_not_as_signed_is_refused_and_the_old_one_serves(
    service: Any, gateway: Any, store: Any, artifacts: Any, tmp_path: Path, case: str
) -> None:
    tamper, reason, downloads = CASES[case]
    model = _copy(artifacts, tmp_path)
    tamper(model)
    store.add(URI, model)
    gateway.versions[("churn", 9)] = URI
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        gateway.set_alias("churn", 9)
        assert not await svc.manager.poll_once()
        health = (await svc.client.get("/health")).json()
        served = await svc.post_json("/predict", {"instances": [ROW]})
        metrics = (await svc.client.get("/metrics")).text

    assert health["model"]["version"] == 1
    assert health["pending_version"] == 9
    assert health["last_error"].startswith("churn version 9: refused: ")
    assert reason in health["last_error"]
    assert served.json()["model"]["version"] == 1
    assert 'inference_model_events_total{event="rejected"} 1.0' in metrics
    # Refused from the listing and the signature alone unless only the content tells.
    assert (URI in store.downloads) is downloads
    assert not list((tmp_path / "cache" / "churn").glob(".partial-*"))


async def test_model_info_names_the_verified_manifest(
    service: Any, gateway: Any, artifacts: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        info = (await svc.client.get("/model-info")).json()
    envelope = (artifacts.dirs["churn-v1"] / SIGNATURE_FILE).read_bytes()
    manifest = VERIFIER.verify(envelope, model_name="churn")
    assert info["manifest_sha256"] == manifest.digest
    assert info["signed_by"] == manifest.key_id == VERIFIER.key_ids[0]


async def test_a_file_changed_in_the_store_is_refused_after_a_restart(
    service: Any, gateway: Any, store: Any, artifacts: Any, tmp_path: Path
) -> None:
    """The cached copy is reused only while the store still holds the same objects."""
    model = _copy(artifacts, tmp_path)
    store.add(URI, model)
    gateway.versions[("churn", 9)] = URI
    gateway.set_alias("churn", 9)
    async with service() as svc:
        assert await svc.manager.poll_once()
    _changed(model)  # in the object store, after registration and a first download
    async with service() as svc:
        assert not await svc.manager.poll_once()
        health = (await svc.client.get("/health")).json()
        answer = await svc.post_json("/predict", {"instances": [ROW]})
    assert health["status"] == "unavailable"
    assert "model.skops changed after it was signed" in health["last_error"]
    assert answer.status_code == 503


async def test_a_cached_copy_changed_on_disk_is_downloaded_again(
    service: Any, gateway: Any, store: Any, tmp_path: Path
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        current = svc.manager.current
    assert current is not None
    cached = tmp_path / "cache" / "churn" / str(current.meta.manifest_sha256)
    (cached / "model.skops").write_bytes(b"changed on this disk")
    async with service() as svc:
        assert await svc.manager.poll_once()
        served = await svc.post_json("/predict", {"instances": [ROW]})
    assert served.status_code == 200
    assert store.downloads.count("s3://mlflow/models/churn-v1/artifacts") == 2


def _settings(**values: Any) -> InferenceSettings:
    s3 = S3Settings(access_key_id="k", secret_access_key=SecretStr("test-secret"))
    return InferenceSettings(model_name="churn", s3=s3, **values)


def test_inference_will_not_start_without_a_trusted_key() -> None:
    with pytest.raises(ValidationError, match="INFERENCE_TRUSTED_SIGNING_KEYS is empty"):
        _settings()
    with pytest.raises(ValidationError, match="not an Ed25519 public key"):
        _settings(trusted_signing_keys=["bm90IGEga2V5"])


def test_several_keys_are_trusted_while_rotating(monkeypatch: pytest.MonkeyPatch) -> None:
    _, new_key = generate_key_pair()
    monkeypatch.setenv("INFERENCE_TRUSTED_SIGNING_KEYS", f"{SIGNING_PUBLIC_KEY}, {new_key}")
    verifier = _settings().manifest_verifier()
    assert verifier is not None and len(verifier.key_ids) == 2


def test_unsigned_models_only_when_asked_for() -> None:
    assert _settings(require_signed_models=False).manifest_verifier() is None
