"""Pure functions: artifact URI mapping, MLmodel parsing, settings validation."""

from __future__ import annotations

import pytest
from mlops_common.errors import UpstreamError
from mlops_common.settings import DatabaseSettings, S3Settings
from mlops_common.signing import generate_key_pair
from model_gateway.mlmodel import parse_mlmodel, to_s3_uri
from model_gateway.settings import GatewaySettings
from pydantic import ValidationError


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mlflow-artifacts:/1/models/m-abc/artifacts", "s3://mlflow/1/models/m-abc/artifacts"),
        (
            "mlflow-artifacts://mlflow:5050/1/models/m-abc/artifacts",
            "s3://mlflow/1/models/m-abc/artifacts",
        ),
        ("mlflow-artifacts:/1/models/m-abc/artifacts/", "s3://mlflow/1/models/m-abc/artifacts"),
        ("s3://other/prefix/m-abc/artifacts", "s3://other/prefix/m-abc/artifacts"),
    ],
)
def test_to_s3_uri(uri: str, expected: str) -> None:
    assert to_s3_uri(uri, "s3://mlflow") == expected


def test_to_s3_uri_keeps_destination_prefix() -> None:
    assert to_s3_uri("mlflow-artifacts:/1/x", "s3://bucket/root/") == "s3://bucket/root/1/x"


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("file:///tmp/mlruns/1/x", "file"),
        ("runs:/abc/model", "runs"),
        ("mlflow-artifacts:/", "mlflow-artifacts"),
    ],
)
def test_to_s3_uri_rejects_other_schemes(uri: str, scheme: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        to_s3_uri(uri, "s3://mlflow")
    assert raised.value.status_code == 502
    assert f"'{scheme}'" in raised.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b"flavors: [unclosed",
        b"- a list",
        b"flavors: {}",
        b"flavors: {sklearn: {}}\nsignature:\n  inputs: '[oops'\n",
    ],
)
def test_parse_mlmodel_rejects_broken_files(raw: bytes) -> None:
    with pytest.raises(UpstreamError) as raised:
        parse_mlmodel(raw, "s3://b/k")
    assert "s3://b/k/MLmodel" in raised.value.message


def test_parse_mlmodel_accepts_signature_written_as_yaml() -> None:
    raw = b"flavors: {python_function: {}}\nsignature:\n  inputs: [{name: x, type: double}]\n"

    parsed = parse_mlmodel(raw, "s3://b/k")

    assert parsed.flavor == "python_function"
    assert parsed.signature == {
        "inputs": [{"name": "x", "type": "double"}],
        "outputs": None,
        "params": None,
    }


def _settings(**overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "s3": S3Settings(access_key_id="k", secret_access_key="a-real-secret"),
        "db": DatabaseSettings(url="postgresql+psycopg2://gw:s3cr3t@db:5432/platform"),
    }
    values.update(overrides)
    return GatewaySettings(**values)


def test_settings_defaults() -> None:
    settings = _settings()

    assert settings.port == 8820
    assert settings.artifacts_destination == "s3://mlflow"


def test_settings_reject_non_s3_destination() -> None:
    with pytest.raises(ValidationError, match="artifacts_destination"):
        _settings(artifacts_destination="/var/mlflow")


def test_settings_reject_placeholder_db_password_in_prod() -> None:
    url = "postgresql+psycopg2://gw:changeme@db:5432/platform"

    with pytest.raises(ValidationError, match="PLATFORM_DB_URL_PASSWORD") as raised:
        _settings(environment="prod", db=DatabaseSettings(url=url))
    assert "changeme" not in str(raised.value)
    assert _settings(environment="dev", db=DatabaseSettings(url=url)).environment == "dev"


def test_trusted_signing_keys_are_read_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = generate_key_pair()[1], generate_key_pair()[1]
    monkeypatch.setenv("GATEWAY_TRUSTED_SIGNING_KEYS", f" {first} ,{second},")

    settings = _settings()

    assert settings.trusted_signing_keys == [first, second]
    verifier = settings.manifest_verifier()
    assert verifier is not None and len(verifier.key_ids) == 2


@pytest.mark.parametrize("value", ["", " , "])
def test_no_trusted_signing_keys_means_no_verifier(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GATEWAY_TRUSTED_SIGNING_KEYS", value)

    assert _settings().manifest_verifier() is None


@pytest.mark.parametrize("key", ["not-base64!", "c2hvcnQ=", generate_key_pair()[0] + "x"])
def test_a_malformed_trusted_signing_key_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("GATEWAY_TRUSTED_SIGNING_KEYS", key)

    with pytest.raises(ValidationError, match="trusted_signing_keys"):
        _settings()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"served_by_window_s": 5, "served_by_write_interval_s": 5}, "WRITE_INTERVAL_S"),
        ({"served_by_window_s": 60, "served_by_retention_s": 30}, "RETENTION_S"),
    ],
)
def test_served_by_intervals_must_fit_the_window(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**overrides)
